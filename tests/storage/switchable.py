"""A LocalStorage whose deletes or writes fail on demand, for tests that run the real app in
another process (`STORAGE_CLASS=tests.storage.switchable:SwitchableLocalStorage`).

While the file `<root>/FAIL_DELETES` exists, every delete raises `StorageError`, as a store
that is down or refuses deletes would; `<root>/FAIL_WRITES` does the same for writes. Removing
the file makes the store work again. The switch is a file so that the test process can flip it
in the app's process.
"""

from __future__ import annotations

from storage.base import StorageError
from storage.local import LocalStorage

SWITCH = "FAIL_DELETES"
WRITE_SWITCH = "FAIL_WRITES"


class SwitchableLocalStorage(LocalStorage):
    def _deletes_fail(self) -> bool:
        return (self.root / SWITCH).exists()

    async def _delete(self, key):
        await self._delete_many([key])

    async def _delete_many(self, keys):
        if self._deletes_fail():
            raise StorageError(f"deleting {len(keys)} object(s) failed: the store is switched off for deletes")
        await super()._delete_many(keys)

    async def _upload(self, key, body, mime, overwrite, content_disposition):
        if (self.root / WRITE_SWITCH).exists():
            raise StorageError(f"writing {key} failed: the store is switched off for writes")
        return await super()._upload(key, body, mime, overwrite, content_disposition)
