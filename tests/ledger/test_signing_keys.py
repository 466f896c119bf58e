"""The broker's signing keys in one process: a periodic reload never undoes a rotation."""

from __future__ import annotations

import threading

from broker.signing import FileKeyRepository, KeyStore, SigningKey


class PausingRepository(FileKeyRepository):
    """Lets a test hold a reload of the thread named "periodic" right after it read the files."""

    def __init__(self, directory) -> None:  # noqa: ANN001
        super().__init__(directory)
        self.read = threading.Event()
        self.release = threading.Event()
        self.written = threading.Event()

    def load_all(self) -> list[SigningKey]:
        keys = super().load_all()
        if threading.current_thread().name == "periodic":
            self.read.set()
            self.release.wait(30)
        return keys

    def save(self, key: SigningKey) -> None:
        super().save(key)
        if key.retired_at is None and self.read.is_set():
            self.written.set()  # the rotation's new key is on disk


def test_a_reload_that_read_before_a_rotation_does_not_install_the_old_keys(tmp_path) -> None:
    repo = PausingRepository(tmp_path / "keys")
    store = KeyStore(repo, algorithm="ES256", max_token_ttl=900)
    old = store.active.kid
    periodic = threading.Thread(target=store.reload, name="periodic")
    periodic.start()
    assert repo.read.wait(30)  # the periodic reload has read the files: only the old key, still active
    rotator = threading.Thread(target=store.rotate, name="rotator")
    rotator.start()
    assert repo.written.wait(30)
    rotator.join(0.5)  # without one reload at a time, the rotation's own reload would finish here
    repo.release.set()
    periodic.join(30)
    rotator.join(30)
    new = store.active.kid
    assert new != old
    assert {k.kid for k in store.keys()} == {old, new}
    token = store.sign({"sub": "s", "jti": "g_1", "iat": 1, "exp": 4_000_000_000})
    store.check_signed(token, {"sub": "s", "jti": "g_1", "iat": 1, "exp": 4_000_000_000})
