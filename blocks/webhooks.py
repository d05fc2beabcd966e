"""What the webhook receiver needs (B61, B52): signing secrets, who may approve, what starts a run."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr


class WebhookSettings(Block):
    """Secrets and rules of the sdlc webhook receiver (`sdlc webhooks serve`)."""

    _block_type_name: ClassVar[str] = "SDLC Webhook Settings"
    _block_type_slug: ClassVar[str] = "sdlc-webhook-settings"
    _description: ClassVar[str] = "Signing secrets, trigger label and approvers for sdlc-flows webhooks."
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://docs.prefect.io/v3/concepts/blocks")
    _code_example: ClassVar[str] = """
```python
from blocks.webhooks import WebhookSettings

WebhookSettings(gitea_secret="...", approvers=["alice"]).save("sdlc-webhooks")
settings = WebhookSettings.load("BLOCK_NAME")
```
"""

    gitea_secret: SecretStr | None = Field(
        default=None, description="Secret of the Gitea webhook; unset refuses Gitea deliveries."
    )
    github_secret: SecretStr | None = Field(
        default=None, description="Secret of the GitHub webhook; unset refuses GitHub deliveries."
    )
    plane_secret: SecretStr | None = Field(
        default=None, description="Secret of the Plane webhook; unset refuses Plane deliveries."
    )
    gitea_credentials_block: str | None = Field(
        default=None,
        description="GiteaCredentials block: work items from Gitea deliveries open and merge their PRs there.",
    )
    github_credentials_block: str | None = Field(
        default=None,
        description="GitHubCredentials block: work items from GitHub deliveries open and merge their PRs there.",
    )
    trigger_label: str = Field(default="sdlc", description="An issue given this label becomes a work item.")
    approvers: list[str] = Field(
        default_factory=list, description="Forge logins whose /approve and /reject comments count."
    )
    project_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Work item ID prefix per repository full name (owner/name); default from the repository name.",
    )
