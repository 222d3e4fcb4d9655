"""Wall, CPU and peak RSS of `upload` of a large file, beside boto3's own `upload_file` with SHA-256 checksums.

    python benchmarks/upload_once.py [--size-mib 512] [--repeat 2]

Moto's server runs in this process; each upload runs in its own child process (so its CPU time and peak RSS are
the uploader's only): boto3's ``upload_file`` (``ChecksumAlgorithm: SHA256``, 16 MiB parts, its 10 threads),
and the project's tasks.s3.upload.upload_file (16 MiB parts, each file read once for the whole file's SHA-256 and
the parts', then the checksum read back with HEAD), alternately, ``--repeat`` times each; the medians are
compared. Targets: wall <= 1.2x and CPU <= 1.5x boto3's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rss import peak_rss_mb  # noqa: E402  (benchmarks/rss.py, beside this script)

MIB = 1024 * 1024
BUCKET = "bench-upload"


def child(kind: str, path: Path, endpoint: str) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig

    from tasks.s3.upload import upload_file

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    wall, cpu = time.perf_counter(), time.process_time()
    if kind == "boto3":
        client.upload_file(str(path), BUCKET, "boto3.bin", ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                           Config=TransferConfig(multipart_threshold=16 * MIB, multipart_chunksize=16 * MIB))
    else:
        record = upload_file(client, path, BUCKET, "ours.bin", overwrite=True, multipart_threshold=16 * MIB,
                             multipart_chunksize=16 * MIB)
        assert record.checksum_verified is not False
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                      "peak_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", choices=["boto3", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, Path(args.file), args.endpoint)

    import boto3

    from flows.emulator import emulator_env, moto_server

    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="bench-upload-") as folder:
        env = {**os.environ, **emulator_env(endpoint)}
        os.environ.update(emulator_env(endpoint))
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        path = Path(folder) / "big.bin"
        with open(path, "wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(MIB))
        runs: dict[str, list[dict[str, float]]] = {"boto3": [], "ours": []}
        for _ in range(args.repeat):
            for kind in runs:
                done = subprocess.run([sys.executable, __file__, "--child", kind, "--file", str(path),
                                       "--endpoint", endpoint], capture_output=True, text=True, env=env, check=True)
                runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "cpu", "peak_mb")} for k, v in runs.items()}
        print(f"{args.size_mib} MiB, {args.repeat} runs each (medians), load {load}")
        for kind, figures in med.items():
            print(f"  {kind:5}: wall {figures['wall']:6.2f} s, CPU {figures['cpu']:6.2f} s, "
                  f"peak RSS {figures['peak_mb']:5.0f} MB")
        print(f"  ours / boto3: wall {med['ours']['wall'] / med['boto3']['wall']:.2f}x (target <= 1.2), "
              f"CPU {med['ours']['cpu'] / med['boto3']['cpu']:.2f}x (target <= 1.5)")


if __name__ == "__main__":
    main()
