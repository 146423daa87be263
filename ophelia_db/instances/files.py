"""`provision`'s files for operators who paste: the answers JSON, the vault and hub SQL.

Written atomically, unchanged files left alone, and mode 0600 when a file
holds a secret (only with ``--include-secrets``); otherwise each secret is a
commented-out placeholder statement (``sql``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophelia_db.instances import seed
from ophelia_db.instances import sql as sqlgen
from ophelia_db.instances.answers import SCHEMA_FILE, Answers, answers_json, resolve_secrets, schema_text


@dataclass(frozen=True)
class Outputs:
    answers_file: Path
    vault_sql: Path
    registry_sql: Path
    schema_file: Path
    changed: tuple[Path, ...]
    secret_files: tuple[Path, ...]
    left_out: tuple[str, ...]
    unset: tuple[str, ...]

    def as_record(self) -> dict[str, Any]:
        return {
            "files": [
                str(p) for p in (self.answers_file, self.vault_sql, self.registry_sql, self.schema_file)
            ],
            "changed": [str(p) for p in self.changed],
            "secret_files": [str(p) for p in self.secret_files],
            "secrets_left_out": list(self.left_out),
        }


def write_text(path: Path, text: str, *, private: bool = False) -> bool:
    """Write atomically (mode 0600 when ``private``); return False if the file already says so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    same = path.is_file() and path.read_text(encoding="utf-8") == text
    if same and (not private or path.stat().st_mode & 0o077 == 0):
        return False
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        # mkstemp creates the file 0600; files without secrets get the usual mode.
        if not private:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def _secret_rows(answers: Answers, api_keys: Mapping[str, str]) -> list[seed.SeedRow]:
    return [
        seed.SeedRow(name, None, "api", "API key", is_secret=True)
        for name in answers.api_key_names
        if name not in api_keys
    ]


def write_outputs(
    answers: Answers, out_dir: Path, *, include_secrets: bool = False, env: Mapping[str, str] | None = None
) -> Outputs:
    """Write the answers JSON, the vault and hub SQL, and the schema under ``out_dir``."""
    secrets = resolve_secrets(answers, os.environ if env is None else env)
    api_keys = dict(secrets.api_keys) if include_secrets else {}
    anon = secrets.anon_key if include_secrets else None
    paths = {
        "answers": out_dir / f"{answers.subdomain}.json",
        "vault": out_dir / "sql" / f"{answers.subdomain}-vault.sql",
        "registry": out_dir / "sql" / f"{answers.subdomain}-registry.sql",
        "schema": out_dir / SCHEMA_FILE,
    }
    missing = _secret_rows(answers, api_keys)
    texts = {
        "answers": (answers_json(answers), False),
        "vault": (sqlgen.vault_script(answers, seed.seed_rows(answers, api_keys), missing), bool(api_keys)),
        "registry": (sqlgen.registry_script(answers, anon), anon is not None),
        "schema": (schema_text(), False),
    }
    changed = [
        paths[k] for k, (text, private) in texts.items() if write_text(paths[k], text, private=private)
    ]
    # Left out: secrets that have a value but were not written (without --include-secrets).
    left_out = [key for key in answers.api_key_names if key in secrets.api_keys and key not in api_keys]
    left_out += ["SUPABASE_ANON_KEY"] if secrets.anon_key and not anon else []
    return Outputs(
        answers_file=paths["answers"],
        vault_sql=paths["vault"],
        registry_sql=paths["registry"],
        schema_file=paths["schema"],
        changed=tuple(changed),
        secret_files=tuple(paths[k] for k, (_, private) in texts.items() if private),
        left_out=tuple(left_out),
        unset=secrets.unset,
    )
