"""A LocalStorage whose deletes fail on demand, for tests that run the real app in another
process (`STORAGE_CLASS=tests.storage.switchable:SwitchableLocalStorage`).

While the file `<root>/FAIL_DELETES` exists, every delete raises `StorageError`, as a store
that is down or refuses deletes would; removing the file makes the store work again. The
switch is a file so that the test process can flip it in the app's process.
"""

from __future__ import annotations

from storage.base import StorageError
from storage.local import LocalStorage

SWITCH = "FAIL_DELETES"


class SwitchableLocalStorage(LocalStorage):
    def _deletes_fail(self) -> bool:
        return (self.root / SWITCH).exists()

    async def _delete(self, key):
        await self._delete_many([key])

    async def _delete_many(self, keys):
        if self._deletes_fail():
            raise StorageError(f"deleting {len(keys)} object(s) failed: the store is switched off for deletes")
        await super()._delete_many(keys)
