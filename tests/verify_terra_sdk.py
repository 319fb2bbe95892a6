"""Verifies a webhook delivery the way receivers do, with code terra-ingest did not write:
Terra's own Python SDK (PyPI `terra-python`, `verify_terra_webhook_signature`) for the
`terra-signature` header, and the Standard Webhooks library (PyPI `standardwebhooks`) for the
`webhook-*` headers. The webhook sender's tests (services/sink-webhooks/tests/send.rs) run it
with the headers and body their receiver got.

usage: python verify_terra_sdk.py terra SECRET BODY_FILE TERRA_SIGNATURE
       python verify_terra_sdk.py standard SECRET BODY_FILE WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE
prints "ok", or "refused: <why>"

For `standard`, a secret written `whsec_<base64>` is given to the library as is (it decodes
it); any other secret as its UTF-8 bytes, the raw key (what terra-ingest signs with).
"""

import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError as StandardError
from terra.utils.verify_signature import (
    WebhookVerificationError as TerraError,
    verify_terra_webhook_signature,
)


def main(argv):
    mode, secret, body_file = argv[1], argv[2], argv[3]
    with open(body_file, "rb") as f:
        body = f.read()
    try:
        if mode == "terra":
            # the SDK takes the body as text (it signs its UTF-8 encoding)
            verify_terra_webhook_signature(body.decode("utf-8"), argv[4], secret)
        elif mode == "standard":
            key = secret if secret.startswith("whsec_") else secret.encode("utf-8")
            headers = {"webhook-id": argv[4], "webhook-timestamp": argv[5], "webhook-signature": argv[6]}
            Webhook(key).verify(body, headers, json_parse=False)
        else:
            print("usage: verify_terra_sdk.py terra|standard ...", file=sys.stderr)
            return 2
    except (TerraError, StandardError) as err:
        print(f"refused: {err}")
        return 0
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
