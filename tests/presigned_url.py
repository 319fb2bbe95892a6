"""Checks pre-signed S3 GET URLs the way S3 does, independently of terra-ingest's code:
the SigV4 query parameters are present and well formed, the credential scope names the
access key, the request's date, the region and s3, the URL has not expired at NOW, and the
signature is the one botocore (AWS's own SigV4 code) computes for the URL as it stands.
moto's server does not check signatures, so the tests ask this script instead.

usage: python presigned_url.py ACCESS_KEY SECRET_KEY REGION NOW URL...
prints one line per URL: "ok", or "refused: <why>"
"""

import datetime
import hmac
import sys
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

MAX_EXPIRES = 7 * 24 * 3600  # S3's limit for SigV4 pre-signed URLs
CLOCK_SKEW = 15 * 60  # S3 refuses requests dated further in the future


def check(access_key, secret_key, region, now, url):
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(params)
    needed = ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
              "X-Amz-SignedHeaders", "X-Amz-Signature"]
    missing = [p for p in needed if p not in query]
    if missing:
        return "refused: not pre-signed, missing " + ",".join(missing)
    if len(params) != len(query):
        return "refused: a parameter given twice"
    if query["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        return "refused: algorithm " + query["X-Amz-Algorithm"]
    amz_date = query["X-Amz-Date"]
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        expires = int(query["X-Amz-Expires"])
    except ValueError:
        return "refused: bad X-Amz-Date or X-Amz-Expires"
    scope = query["X-Amz-Credential"].split("/")
    if scope != [access_key, amz_date[:8], region, "s3", "aws4_request"]:
        return "refused: credential scope " + "/".join(scope[1:])
    if not 1 <= expires <= MAX_EXPIRES:
        return "refused: X-Amz-Expires out of range"
    if signed_at > now + CLOCK_SKEW:
        return "refused: signed in the future"
    if now >= signed_at + expires:
        return "refused: expired"
    # the signature over the URL without it, as S3 recomputes it
    rest = [p for p in parts.query.split("&") if not p.startswith("X-Amz-Signature=")]
    unsigned = urlunsplit(parts._replace(query="&".join(rest)))
    request = AWSRequest(method="GET", url=unsigned)
    request.context["timestamp"] = amz_date
    auth = S3SigV4QueryAuth(Credentials(access_key, secret_key), "s3", region, expires=expires)
    if sorted(auth.headers_to_sign(request)) != sorted(query["X-Amz-SignedHeaders"].split(";")):
        return "refused: signed headers " + query["X-Amz-SignedHeaders"]
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, query["X-Amz-Signature"]):
        return "refused: signature does not match"
    return "ok"


if __name__ == "__main__":
    access_key, secret_key, region, now = sys.argv[1:5]
    for url in sys.argv[5:]:
        print(check(access_key, secret_key, region, float(now), url))
