"""moto's server (`moto_server`) with S3's conditional writes made atomic.

moto checks `If-Match` / `If-None-Match` and then stores the object as separate steps, on
one thread per request with no lock (moto/s3/responses.py `S3Response.put_object`: the
precondition check, then `backend.put_object`, which publishes the key, then
`set_metadata`). Two conditional PUTs on the same ETag can both pass the check, and both
win; a HEAD between the store and `set_metadata` sees the new ETag without its metadata.
AWS S3 promises neither can happen (the first conditional write to finish wins, the rest
get 412 / 409). Tests of a protocol built on that promise (services/sink-objects/tests/
race.rs) run against this: every object-level request (`S3Response._key_response`: GET,
HEAD, PUT, DELETE, multipart) takes one lock, so each is atomic. moto's handlers are
Python under the GIL anyway, so this costs next to nothing.
"""
import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

if not hasattr(S3Response, "_key_response"):
    sys.exit(
        "tests/moto_server.py: this moto has no S3Response._key_response; "
        "make its object requests atomic another way (see the docstring)"
    )

_lock = threading.Lock()
_key_response = S3Response._key_response


def _atomic_key_response(self, *args, **kwargs):
    with _lock:
        return _key_response(self, *args, **kwargs)


S3Response._key_response = _atomic_key_response

if __name__ == "__main__":
    main(sys.argv[1:])
