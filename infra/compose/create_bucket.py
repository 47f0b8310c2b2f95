"""Create the run bucket on the compose stack's S3 service (the ``bucket`` service, run once).

Waits, with a deadline, until the service stores an object (its S3 gateway answers before its
volume server has registered), creates ``S3_BUCKET`` if it is not there, and exits 0. Credentials
and endpoint: the standard AWS_* variables. Runs in the trainer's image (boto3 is there)."""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    bucket = os.environ.get("S3_BUCKET", "runs")
    wait_s = float(os.environ.get("S3_WAIT_SECONDS", "180"))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(
        connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}))
    deadline = time.monotonic() + wait_s
    error = "no answer yet"
    while time.monotonic() < deadline:
        try:
            try:
                client.create_bucket(Bucket=bucket)
                print(f"created bucket {bucket} on {endpoint}", flush=True)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            client.put_object(Bucket=bucket, Key=".ready", Body=b"ok")  # stores data, not just answers
            client.delete_object(Bucket=bucket, Key=".ready")
            print(f"bucket {bucket} is ready", flush=True)
            return 0
        except (BotoCoreError, ClientError) as e:
            error = f"{type(e).__name__}: {e}"
            if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in (
                    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                break  # waiting cannot fix credentials
        time.sleep(0.5)
    print(f"the S3 service at {endpoint} is not usable ({error}); check `docker compose logs s3` and that the "
          f"stack's AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are the same for every service", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
