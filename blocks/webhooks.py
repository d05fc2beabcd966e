"""What the webhook receiver needs (B61, B52): signing secrets, who may approve, what starts a run."""

from __future__ import annotations

import re
from typing import ClassVar, Self

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator

from sdlc.models import BlockName
from sdlc.retry import RetryKnobs


class RunDefaults(RetryKnobs):
    """What a work item started by a webhook runs with (issue 15): the deployment trigger passes these on."""

    agent_profile: BlockName | None = Field(
        default=None,
        description="AgentProfile block of the work items; unset: SDLC_AGENT_PROFILE, else the repository's"
        " .sdlc/config.yaml agent_profile, else the issue is refused.",
    )
    budget_usd: float | None = Field(default=None, gt=0, description="Spend budget of each work item in dollars.")
    plane_block: BlockName | None = Field(
        default=None, description="PlaneCredentials block: keep each work item's Plane item in step."
    )


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
    forgejo_secret: SecretStr | None = Field(
        default=None, description="Secret of the Forgejo (Codeberg) webhook; unset refuses Forgejo deliveries."
    )
    gitlab_secret: SecretStr | None = Field(
        default=None,
        description="Secret token of the GitLab webhook (sent back as X-Gitlab-Token); unset refuses GitLab deliveries.",
    )
    telegram_secret: SecretStr | None = Field(
        default=None,
        description="The secret_token given to Telegram's setWebhook (1-256 of A-Z a-z 0-9 _ -); "
        "unset refuses Telegram deliveries.",
    )
    telegram_block: BlockName | None = Field(
        default=None,
        description="TelegramNotification block whose chat_id and approver_user_ids say who may decide from Telegram.",
    )
    gitea_credentials_block: str | None = Field(
        default=None,
        description="GiteaCredentials block: work items from Gitea deliveries open and merge their PRs there.",
    )
    github_credentials_block: str | None = Field(
        default=None,
        description="GitHubCredentials block: work items from GitHub deliveries open and merge their PRs there.",
    )
    forgejo_credentials_block: str | None = Field(
        default=None,
        description="GiteaCredentials block of a Forgejo (Codeberg): work items from Forgejo deliveries open and "
        "merge their PRs there.",
    )
    gitlab_credentials_block: str | None = Field(
        default=None,
        description="GitLabCredentials block: work items from GitLab deliveries open and merge their MRs there.",
    )
    trigger_label: str = Field(default="sdlc", description="An issue given this label becomes a work item.")
    approvers: list[str] = Field(
        default_factory=list, description="Forge logins whose /approve and /reject comments count."
    )
    project_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Work item ID prefix per repository full name (owner/name); default from the repository name.",
    )
    defaults: RunDefaults = Field(
        default_factory=lambda: RunDefaults(),
        description="What a labelled issue's work item runs with: agent profile, budget, Plane block, retries.",
    )
    repositories: dict[str, RunDefaults] = Field(
        default_factory=dict,
        description="Per repository full name (owner/name): what it sets wins over the defaults.",
    )

    def run_defaults(self, full_name: str) -> RunDefaults:
        """The repository's own settings over the defaults, field by field."""
        own = self.repositories.get(full_name)
        if own is None:
            return self.defaults
        return self.defaults.model_copy(update=own.model_dump(exclude_none=True))

    @field_validator("telegram_secret")
    @classmethod
    def _telegram_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """Telegram's setWebhook takes only these, so any other secret could never match a delivery."""
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("telegram_secret must be 1 to 256 of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _telegram_needs_its_block(self) -> Self:
        if self.telegram_secret is not None and not self.telegram_block:
            raise ValueError("telegram_secret needs telegram_block: the block says which chat and users may decide")
        return self
