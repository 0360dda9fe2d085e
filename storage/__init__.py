"""Blob storage clients, chosen by `STORAGE_URL`. Importing this package loads no SDK."""

from .base import (
    BlobStorage,
    InvalidObjectKey,
    ObjectExists,
    ObjectNotFound,
    StorageAccessDenied,
    StorageClosed,
    StorageError,
    StoredObject,
    element_object_key,
    validate_object_key,
)

# scheme -> ("module:Class", pip extra that provides its SDK or None). Resolved lazily by
# settings.py so that importing `storage` never imports boto or the Azure SDK.
STORAGE_SCHEMES: dict[str, tuple[str, str | None]] = {
    "file": ("storage.local:LocalStorage", None),
    "memory": ("storage.memory:MemoryStorage", None),
    "s3": ("storage.s3:S3Storage", "aws"),
    "abfs": ("storage.azure:AzureDataLakeStorage", "azure"),
    "abfss": ("storage.azure:AzureDataLakeStorage", "azure"),
}

__all__ = [
    "STORAGE_SCHEMES",
    "BlobStorage",
    "InvalidObjectKey",
    "ObjectExists",
    "ObjectNotFound",
    "StorageAccessDenied",
    "StorageClosed",
    "StorageError",
    "StoredObject",
    "element_object_key",
    "validate_object_key",
]
