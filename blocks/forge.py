"""Forge credentials (B43, B52): where a Gitea, GitHub or GitLab lives and the token to reach it.

The token is a SecretStr, unwrapped only where the HTTP client is built; clients
take a block, never a raw token. Bad configuration fails when the block loads.
"""

from __future__ import annotations

from typing import ClassVar

import httpx
from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, HttpUrl, SecretStr, field_validator

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class _ForgeCredentials(CredentialsBlock):
    """Shared shape: an API base URL, a token and an explicit default timeout."""

    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://docs.prefect.io/v3/concepts/blocks")
    api_url: str = Field(description="Base URL of the forge's REST API.")
    token: SecretStr = Field(description="API token; stored as a secret and never logged.")
    timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="Timeout of one API request in seconds.")

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"api_url must start with http:// or https:// (got {value[:60]!r})")
        return value.rstrip("/")

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def get_client(self, *, transport: httpx.BaseTransport | None = None) -> httpx.Client:
        """An httpx client with auth, base URL and timeout set; the caller closes it."""
        return httpx.Client(
            base_url=self.api_url,
            headers=self._headers(),
            timeout=httpx.Timeout(self.timeout_seconds, connect=min(10.0, self.timeout_seconds)),
            transport=transport,
            follow_redirects=False,
        )


class GiteaCredentials(_ForgeCredentials):
    """A Gitea server's API (…/api/v1) and a token with repository write access."""

    _block_type_name: ClassVar[str] = "SDLC Gitea Credentials"
    _block_type_slug: ClassVar[str] = "sdlc-gitea-credentials"
    _description: ClassVar[str] = "Gitea API URL and token for sdlc-flows pull requests and statuses."
    _code_example: ClassVar[str] = """
```python
from blocks.forge import GiteaCredentials

GiteaCredentials(api_url="https://gitea.example.com/api/v1", token="...").save("gitea")
credentials = GiteaCredentials.load("BLOCK_NAME")
```
"""

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token.get_secret_value()}", "Accept": "application/json"}


class GitHubCredentials(_ForgeCredentials):
    """GitHub's REST API and a token with pull-request and status access."""

    _block_type_name: ClassVar[str] = "SDLC GitHub Credentials"
    _block_type_slug: ClassVar[str] = "sdlc-github-credentials"
    _description: ClassVar[str] = "GitHub API URL and token for sdlc-flows pull requests and checks."
    _code_example: ClassVar[str] = """
```python
from blocks.forge import GitHubCredentials

GitHubCredentials(api_url="https://api.github.com", token="...").save("github")
credentials = GitHubCredentials.load("BLOCK_NAME")
```
"""
    api_url: str = Field(default="https://api.github.com", description="Base URL of GitHub's REST API.")
    api_version: str = Field(default="2022-11-28", description="Pinned X-GitHub-Api-Version header.")

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token.get_secret_value()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": self.api_version,
        }


class GitLabCredentials(_ForgeCredentials):
    """A GitLab's REST API (gitlab.com or self-managed, …/api/v4) and a token with the ``api`` scope."""

    _block_type_name: ClassVar[str] = "SDLC GitLab Credentials"
    _block_type_slug: ClassVar[str] = "sdlc-gitlab-credentials"
    _description: ClassVar[str] = "GitLab API URL and token for sdlc-flows merge requests, pipelines and notes."
    _code_example: ClassVar[str] = """
```python
from blocks.forge import GitLabCredentials

GitLabCredentials(api_url="https://gitlab.example.com/api/v4", token="glpat-...").save("gitlab")
credentials = GitLabCredentials.load("BLOCK_NAME")
```
"""
    api_url: str = Field(default="https://gitlab.com/api/v4", description="Base URL of GitLab's REST API v4.")

    def _headers(self) -> dict[str, str]:
        # PRIVATE-TOKEN takes personal, project and group access tokens alike.
        return {"PRIVATE-TOKEN": self.token.get_secret_value(), "Accept": "application/json"}
