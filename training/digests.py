"""SHA-256 digests of a model bundle's files: written with the bundle, recorded at registration, checked at load.

`digests.json` sits in the bundle folder and lists every other file of the bundle (factors,
tables, metadata, cold-start towers) with its SHA-256. Registration records the digest of that
manifest as tags of the MLflow model version and its run (`REGISTERED_TAG`), so a bundle whose
files were changed afterwards — even one whose manifest was rewritten to match — no longer
matches what was registered and is refused.

Why SHA-256 of whole files rather than of the arrays: it covers every file the same way (a
TorchScript tower, a Parquet table, an .npy header), costs one read, and is what the FAISS
index manifests (serving.index_artifacts) already use.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from wenlv.errors import WenlvError

MANIFEST = "digests.json"
FORMAT = 1
ALGORITHM = "sha256"
REGISTERED_TAG = "wenlv.bundle_sha256"  # version and run tag: sha256 of the canonical manifest
FILES_TAG = "wenlv.bundle_files"        # version tag: the manifest's {file: sha256}, for people reading the registry
REMEDY = ("re-register it: train again with `wenlv train` (which writes digests.json and records its digest), "
          "or restore the files that were registered")


class BundleIntegrityError(WenlvError):
    """A bundle's files do not match the digests recorded for them (or there are none to check)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bundle_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)


def write_manifest(folder: str | Path) -> dict:
    """Digest every file under `folder` into `folder/digests.json`; returns the manifest."""
    folder = Path(folder)
    manifest = {"format": FORMAT, "algorithm": ALGORITHM,
                "files": {name: file_sha256(folder / name) for name in _bundle_files(folder)}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def manifest_sha256(manifest: dict) -> str:
    """The digest registration records: sha256 of the manifest in canonical JSON."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleIntegrityError(f"the model bundle has no {MANIFEST}, so its files cannot be checked; {REMEDY}")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise BundleIntegrityError(f"the bundle's {MANIFEST} is not valid JSON ({exc}); {REMEDY}") from exc
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("algorithm") != ALGORITHM
            or not isinstance(manifest.get("files"), dict)):
        raise BundleIntegrityError(f"the bundle's {MANIFEST} is not a format-{FORMAT} {ALGORITHM} manifest; {REMEDY}")
    return manifest


def verify_folder(folder: str | Path) -> dict:
    """The folder's manifest, once every file matches it and no file is missing or extra; else BundleIntegrityError."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    listed, present = set(manifest["files"]), set(_bundle_files(folder))
    if listed - present:
        raise BundleIntegrityError(f"bundle files missing: {', '.join(sorted(listed - present))}")
    if present - listed:
        raise BundleIntegrityError(f"bundle files not in {MANIFEST}: {', '.join(sorted(present - listed))}")
    for name in sorted(listed):
        if file_sha256(folder / name) != manifest["files"][name]:
            raise BundleIntegrityError(f"{name} does not match its recorded sha256 (the file was changed or damaged)")
    return manifest


def registration_tags(manifest: dict) -> dict[str, str]:
    """Tags that record a manifest on a model version (MLflow tag values hold up to 5000 characters)."""
    tags = {REGISTERED_TAG: manifest_sha256(manifest)}
    files = json.dumps(manifest["files"], sort_keys=True, separators=(",", ":"))
    if len(files) <= 5000:
        tags[FILES_TAG] = files
    return tags


def check_registered(manifest: dict, recorded: str | None, what: str) -> None:
    """Refuse a bundle whose (verified) manifest is not the one recorded when `what` was registered."""
    if not recorded:
        raise BundleIntegrityError(f"{what} has no recorded bundle digest (tag {REGISTERED_TAG}); {REMEDY}")
    found = manifest_sha256(manifest)
    if found != recorded:
        raise BundleIntegrityError(f"{what}: the bundle's {MANIFEST} (sha256 {found[:12]}…) is not the one "
                                   f"recorded at registration ({recorded[:12]}…); its files were changed after "
                                   f"registration")
