"""Reading one item from Genesys Cloud and checking it: an Open Messaging integration's name and
signature secret, or a webhook integration's target config with its credentials and URLs (its own,
and an OAuth token endpoint's) the URL policy accepts. Anything wrong with the item is
``ConfigRejected`` (a message safe to log)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeGuard

from pydantic import SecretStr, ValidationError

from relay.errors import ConfigRejected, UnsafeUrl, UnusableSecret
from relay.logic.url_policy import Resolver, UrlPolicy
from relay.models.secrets import RotatingSecret, SecretKind
from relay.models.targets import SecurityType
from relay.models.webhook_config import WebhookConfig, safe_errors, webhook_config_from_genesys
from relay.ports import GenesysReader

# Genesys wants the Open Messaging signature secret longer than 15 characters.
MIN_SIGNATURE_SECRET_CHARS = 16
# Credential keys in a webhook integration's config (config.credentials), see docs/config-sync.md.
CREDENTIAL_KEYS = ("security", "signingSecret", "encryptionKey", "clientCertificate")
_CREDENTIAL_KINDS = (SecretKind.AUTH, SecretKind.SIGNING, SecretKind.ENCRYPTION, SecretKind.MTLS)


class ConfigReader:
    """``existing_secret(kind, id)`` is what Secrets Manager holds now (Genesys may redact values);
    ``known``/``accepted`` are the integrations a target may name, and those this run accepted so far."""

    def __init__(
        self,
        genesys: GenesysReader,
        *,
        policy: UrlPolicy,
        resolve: Resolver,
        existing_secret: Callable[[SecretKind, str], RotatingSecret | None],
        known: set[str],
        accepted: set[str],
    ) -> None:
        self._genesys = genesys
        self._policy = policy
        self._resolve = resolve
        self._existing_secret = existing_secret
        self._known = known
        self._accepted = accepted

    # --- Open Messaging integrations ---------------------------------------------------------------
    def open_integration(self, integration_id: str) -> tuple[str, SecretStr | None]:
        """Its name, and its signature secret (None: keep the one Secrets Manager holds)."""
        doc = self._genesys.get_open_integration(integration_id)
        if doc.get("id") != integration_id:
            raise ConfigRejected("Genesys answered with a different integration id")
        name = (doc.get("name") or "").strip()
        if not name:
            raise ConfigRejected("integration has no name")
        if str(doc.get("createStatus") or "").lower() == "error":
            raise ConfigRejected("integration creation failed in Genesys (createStatus Error)")
        if str(doc.get("status") or "Active").lower() != "active":
            raise ConfigRejected(f"integration is disabled in Genesys (status {doc.get('status')})")
        token = doc.get("outboundNotificationWebhookSignatureSecretToken")
        if _present(token):  # all `*` is Genesys' redaction, never a secret to sign with
            if len(token) < MIN_SIGNATURE_SECRET_CHARS:
                raise ConfigRejected(f"signature secret shorter than {MIN_SIGNATURE_SECRET_CHARS} characters")
            return name, SecretStr(token)
        # Genesys may not return the secret in clear: keep the one already in Secrets Manager.
        existing, held = self._kept_secret(SecretKind.SIGNATURE, integration_id)
        if existing is None:
            raise ConfigRejected(f"Genesys returned no signature secret and {held}")
        if len(existing.current.get_secret_value()) < MIN_SIGNATURE_SECRET_CHARS:
            # As Genesys' own is refused: a short key is one anyone could guess to sign a webhook with.
            raise ConfigRejected(
                "Genesys returned no signature secret and the one Secrets Manager holds is shorter than "
                f"{MIN_SIGNATURE_SECRET_CHARS} characters: provision the real one there"
            )
        return name, None

    # --- webhook targets ---------------------------------------------------------------------------
    def checked_target(self, target_id: str) -> WebhookConfig:
        """The target's config, checked, with its URLs normalised as the dispatcher will connect to them."""
        config = self._webhook_config(target_id)
        url = self._check_target(config)
        oauth2 = config.security.oauth2
        if oauth2 is None:
            return config.model_copy(update={"url": url})
        # The token endpoint is the relay's to call as much as the target is: the same policy.
        token_url = self._checked_url(oauth2.token_url, what="OAuth token URL")
        security = config.security.model_copy(
            update={"oauth2": oauth2.model_copy(update={"token_url": token_url})}
        )
        return config.model_copy(update={"url": url, "security": security})

    def _webhook_config(self, target_id: str) -> WebhookConfig:
        integration = self._genesys.get_integration(target_id)
        if integration.get("id") != target_id:
            raise ConfigRejected("Genesys answered with a different integration id")
        config = self._genesys.get_integration_config(target_id)
        references = config.get("credentials") or {}
        values: dict[str, str | None] = {}
        for key, kind in zip(CREDENTIAL_KEYS, _CREDENTIAL_KINDS, strict=True):
            ref = references.get(key) if isinstance(references, dict) else None
            value = self._credential_value(ref["id"]) if isinstance(ref, dict) and ref.get("id") else None
            if value is None and isinstance(ref, dict):
                # Genesys redacts credential fields for some clients: keep what Secrets Manager holds.
                existing, held = self._kept_secret(kind, target_id)
                value = existing.current.get_secret_value() if existing else None
                if value is None and (key != "security" or _takes_a_credential(config)):
                    # A configured signing secret, key or certificate that cannot be read: storing the
                    # target without it would sign nothing, send in clear or skip the certificate.
                    raise ConfigRejected(
                        f"credential {key} came back redacted (empty or all *) and {held}: provision it "
                        "there, or remove the credential in Genesys"
                    )
            values[key] = value
        try:
            return webhook_config_from_genesys(integration, config, values)
        except ValidationError as exc:
            raise ConfigRejected(f"invalid config: {safe_errors(exc)}") from None

    def _kept_secret(self, kind: SecretKind, ident: str) -> tuple[RotatingSecret | None, str]:
        """What Secrets Manager holds for a value Genesys redacted, and, when that is nothing usable, how
        to say so: absent, or there but not in the relay's shape (its name, never its value)."""
        try:
            existing = self._existing_secret(kind, ident)
        except UnusableSecret as exc:
            return None, f'{exc} ({{"current": "...", "previous": null}})'
        if existing is not None and not _present(existing.current.get_secret_value()):
            # A redaction (stars pasted from a masked listing, say) is no more a value there than here.
            return None, "the value Secrets Manager holds is redacted too (empty or all *)"
        return existing, "Secrets Manager holds none"

    def _credential_value(self, credential_id: str) -> str | None:
        fields = self._genesys.get_credential(credential_id).get("credentialFields") or {}
        if not isinstance(fields, dict):
            return None
        value = fields.get("value") or fields.get("token")
        # A redacted password with its user name is still redacted: "user:****" is no credential.
        if value is None and fields.get("userName") and _present(fields.get("password")):
            value = f"{fields['userName']}:{fields['password']}"
        if value is None and _present(fields.get("certificate")) and _present(fields.get("privateKey")):
            value = f"{fields['certificate'].strip()}\n{fields['privateKey'].strip()}\n"  # one PEM bundle
        return value if _present(value) else None  # absent or redacted

    def _check_target(self, config: WebhookConfig) -> str:
        """The target's URL as the dispatcher will use it (normalised), if the config may be stored."""
        if not config.enabled:
            raise ConfigRejected("webhook integration is disabled in Genesys")
        if config.integration_id not in self._known:
            raise ConfigRejected(
                f"config names open messaging integration {config.integration_id}, which is not in "
                "GENESYS_OPEN_MESSAGING_INTEGRATION_IDS"
            )
        if config.integration_id not in self._accepted:
            raise ConfigRejected(
                f"config names open messaging integration {config.integration_id}, which this run "
                "rejected (see its own rejection)"
            )
        return self._checked_url(config.url, what="URL")

    def _checked_url(self, url: str, *, what: str) -> str:
        try:
            return self._policy.check_url(url, resolve=self._resolve)
        except UnsafeUrl as exc:
            raise ConfigRejected(f"{what} refused: {exc}") from None


def _takes_a_credential(config: dict[str, object]) -> bool:
    """Whether the config's security type needs its ``security`` credential (none does not): a redacted
    one is then said to be redacted, not missing from a config Genesys holds it for."""
    properties = config.get("properties")
    kind = properties.get("securityType") if isinstance(properties, dict) else None
    return kind in {t.value for t in SecurityType if t is not SecurityType.NONE}


def _present(value: object) -> TypeGuard[str]:
    """A credential field that holds a value: not absent, empty, or redacted (all ``*``)."""
    return isinstance(value, str) and bool(value) and set(value) != {"*"}
