"""What a wait on S3 observes: the keys or the objects under a prefix matching a pattern, with their sizes."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.s3.objects import ObjectInfo, head_object, list_objects

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client



# ------------------------------------------------------------------------------------------------- waiting
@dataclass
class Observation:
    """One look at the bucket: what matches, what is there but does not count, what is missing."""

    matched: list[ObjectInfo]
    others: list[tuple[ObjectInfo, str]]
    missing: list[str]

    def describe(self) -> str:
        text = f"{len(self.matched)} matching"
        if self.missing:
            text += f", missing {', '.join(self.missing[:5])}" + (" ..." if len(self.missing) > 5 else "")
        return text


def observe_keys(client: S3Client, bucket: str, keys: list[str], min_size: int) -> Observation:
    """HEAD each expected key."""
    obs = Observation([], [], [])
    for key in keys:
        info = head_object(client, bucket, key)
        if info is None:
            obs.missing.append(key)
        elif info.size < min_size:
            obs.others.append((info, f"smaller than {min_size} B"))
        else:
            obs.matched.append(info)
    return obs


def observe_prefix(client: S3Client, bucket: str, prefix: str, pattern: str, min_size: int) -> Observation:
    """LIST the prefix; keys are matched to ``pattern`` by their part after the prefix (glob, ``*`` spans ``/``)."""
    obs = Observation([], [], [])
    for info in list_objects(client, bucket, prefix):
        rest = info.key[len(prefix):]
        if not fnmatch.fnmatchcase(rest, pattern):
            obs.others.append((info, f"does not match {pattern!r}"))
        elif info.size < min_size:
            obs.others.append((info, f"smaller than {min_size} B"))
        else:
            obs.matched.append(info)
    return obs
