"""What expect_objects' content checks say (the models a user writes): the format and its options (csv, jsonl, json,
parquet), row counts, columns and their rules, same_as_upload."""

from __future__ import annotations

import codecs
import fnmatch
import re
from typing import Annotated, Any, Iterator, Literal, Union

from pydantic import Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

from tasks.kit.step import Baseline, Severity, SpecModel, severity_field

Scalar = Union[StrictBool, StrictInt, StrictFloat, str]


Bound = Union[StrictInt, StrictFloat, str]



# ------------------------------------------------------------------------------------------------- the models
class ObjectCsvOptions(SpecModel):
    """How a CSV object is written (Python's csv module reads it)."""

    delimiter: str = Field(",", min_length=1, max_length=1, description="The field separator, one character "
                           "(`\\t` for tab-separated).")
    quote_char: str = Field('"', min_length=1, max_length=1, description="The quote character, one character.")
    header: bool = Field(True, description="The first row holds the column names.")
    names: list[str] | None = Field(None, min_length=1, description="Column names when `header: false`, for "
                                    "`conditions` (the header gives them otherwise).")
    encoding: str = Field("utf-8", description="Text encoding (a Python codec name: utf-8, utf-8-sig, latin-1, "
                          "cp1252, ...).")
    null_values: list[str] = Field([""], description="Cell texts that count as null (for `not_null`; other "
                                   "conditions skip nulls).")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            info = codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (use a Python codec name such as utf-8 or latin-1)") \
                from None
        if not getattr(info, "_is_text_encoding", True):
            raise ValueError(f"{value!r} is not a text encoding (it is a codec for bytes, such as zlib or base64); "
                             "use a text encoding such as utf-8 or latin-1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ObjectCsvOptions":
        if self.delimiter == self.quote_char:
            raise ValueError("'delimiter' and 'quote_char' must differ")
        if self.delimiter in "\r\n" or self.quote_char in "\r\n":
            raise ValueError("'delimiter' and 'quote_char' cannot be a line break")
        if self.header and self.names is not None:
            raise ValueError("'names' goes with header: false (with a header, the header names the columns)")
        return self


class ObjectColumnRule(SpecModel):
    """Conditions on every value of one column; nulls are only checked by `not_null` (and ignored by `unique`)."""

    not_null: bool = Field(False, description="No value is null (CSV: a cell in `null_values`; JSON: null or a "
                           "missing key; parquet: null).")
    unique: bool = Field(False, description="No value occurs twice (a 64-bit hash per distinct value is kept).")
    one_of: list[Scalar] | None = Field(None, min_length=1, description="Every value is one of these (compared as "
                                        "text: `1` matches CSV's `1`, `true` JSON's true).")
    min: Bound | None = Field(None, description="Every value is at least this: a number compares numerically (a "
                              "value that is not a number fails), a text as text (ISO dates as dates on parquet).")
    max: Bound | None = Field(None, description="Every value is at most this (compared as for `min`).")
    regex: str | None = Field(None, max_length=1000, description="Every value (as text) matches this regular "
                              "expression in full (Python syntax).")
    severity: Severity | None = severity_field("one of these conditions", None)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> "ObjectColumnRule":
        if not (self.not_null or self.unique) and all(
                getattr(self, f) is None for f in ("one_of", "min", "max", "regex")):
            raise ValueError("give at least one of not_null, unique, one_of, min, max, regex")
        if self.min is not None and self.max is not None and _comparable_bounds(self.min, self.max) \
                and self.min > self.max:  # type: ignore[operator]
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


def _comparable_bounds(a: Any, b: Any) -> bool:
    return isinstance(a, str) == isinstance(b, str)


class SameAsUpload(SpecModel):
    """The object is a byte-for-byte copy of a file an `upload` step of the case sent."""

    step: str = Field(..., description="The name of the `upload` step (in this case) that sent the file.")
    file: str = Field(..., description="The file, as that step's `files` names it (or a path one of its glob "
                      "patterns matches), relative to the spec; written without templates.")


class ObjectContent(SpecModel):
    """What every matching object must hold, read streamed in bounded memory (see docs/steps.md)."""

    format: Literal["csv", "jsonl", "json", "parquet"] | None = Field(
        None, description="How to read the object; needed by every check but `same_as_upload`. `json`: a "
        "top-level array of records, or one object.")
    compression: Literal["auto", "gzip", "none"] = Field(
        "auto", description="`auto`: gunzip when the key ends in `.gz` or the object starts with gzip's magic "
        "bytes. Parquet is never gzipped as a whole (its pages are compressed inside).")
    csv: ObjectCsvOptions | None = Field(None, description="CSV options (with format: csv).")
    row_count: Annotated[int, Field(ge=0)] | Baseline | None = Field(
        None, description="Exactly this many rows (records; CSV: after the header); or, as a baseline "
        "(`{within_pct_of_baseline: 20, runs: 7}`), the rows of every object the step checked, together, about as "
        "many as in the case's last passing runs.")
    min_rows: int | None = Field(None, ge=0, description="At least this many rows.")
    max_rows: int | None = Field(None, ge=0, description="At most this many rows.")
    columns: list[str] | None = Field(None, min_length=1, description="The column names (CSV: the header; JSON: "
                                      "every record's keys; parquet: the schema's).")
    columns_ordered: bool = Field(True, description="`columns` must be in this order; false: as a set.")
    column_types: dict[str, str] | None = Field(
        None, min_length=1, description="Parquet only: column -> type as pyarrow names it (`int64`, `string`, "
        "`double`, `decimal128(12, 2)`, `date32[day]`, `timestamp[us, tz=UTC]`).")
    conditions: dict[str, ObjectColumnRule] = Field(
        default_factory=dict, description="Column -> conditions every value must meet; checked on objects of up "
        "to `conditions_max_mb`.")
    conditions_max_mb: int = Field(64, ge=1, le=1024, description="`conditions` are checked on objects of up to "
                                   "this size (MiB, as stored); a larger one stops the step as not checkable.")
    same_as_upload: SameAsUpload | None = Field(None, description="The object's SHA-256 equals the uploaded file's "
                                                "(a pass-through copy); sizes are compared first.")
    severity: Severity = severity_field("a check of this content (a column of `conditions` may say its own)")

    @model_validator(mode="after")
    def _consistent(self) -> "ObjectContent":
        parsed = [name for name in ("row_count", "min_rows", "max_rows", "columns", "column_types")
                  if getattr(self, name) is not None] + (["conditions"] if self.conditions else [])
        if not parsed and self.same_as_upload is None:
            raise ValueError("give at least one check: row_count, min_rows, max_rows, columns, column_types, "
                             "conditions or same_as_upload")
        if parsed and self.format is None:
            raise ValueError(f"'format' is needed to check {', '.join(repr(p) for p in parsed)} (csv, jsonl, json or "
                             "parquet)")
        if self.csv is not None and self.format != "csv":
            raise ValueError("'csv' options go with format: csv")
        if self.column_types is not None and self.format != "parquet":
            raise ValueError("'column_types' goes with format: parquet (CSV and JSON carry no column types)")
        if self.format == "parquet" and self.compression == "gzip":
            raise ValueError("a parquet object is not gzipped as a whole (its pages are compressed inside): "
                             "leave 'compression' at auto")
        if self.min_rows is not None and self.max_rows is not None and self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) is greater than max_rows ({self.max_rows})")
        csv_opts = self.csv or ObjectCsvOptions.model_validate({})
        if self.format == "csv" and not csv_opts.header:
            if self.columns is not None:
                raise ValueError("'columns' needs csv.header: true (without a header the object names no columns)")
            unknown = sorted(set(self.conditions) - set(csv_opts.names or []))
            if unknown:
                raise ValueError(f"conditions on {', '.join(unknown)}: with csv.header: false, name the columns in "
                                 "csv.names")
        return self

    def upload_check(self, case: Any) -> list[str]:
        """``same_as_upload`` names an upload step of ``case`` and one of its files (see ``StepBase.case_checks``)."""
        ref = self.same_as_upload
        if ref is None:
            return []
        where = "field 'content.same_as_upload"
        if "{{" in ref.file or "{%" in ref.file:
            return [f"{where}.file': write the file without templates"]
        step = next((s for s in _case_steps(case) if getattr(s, "name", None) == ref.step), None)
        if step is None or getattr(step, "kind", None) != "upload":
            return [f"{where}.step': no upload step named {ref.step!r} in the case"]
        wanted = ref.file.replace("\\", "/")
        patterns = [f.replace("\\", "/") for f in step.files]
        # a file the upload names as it is, or one of its globs matches: relative, with no '..' (so it lies where
        # the upload's files lie, which validation confines)
        plain = not wanted.startswith("/") and ":" not in wanted and ".." not in wanted.split("/")
        if not any(wanted == p or (plain and any(c in p for c in "*?[") and fnmatch.fnmatchcase(wanted, p))
                   for p in patterns):
            return [f"{where}.file': {ref.file!r} is not one of the files of step {ref.step!r} "
                    f"({', '.join(step.files)})"]
        return []


def _case_steps(case: Any) -> Iterator[Any]:
    for item in getattr(case, "steps", []):
        if getattr(item, "kind", None) == "parallel":
            yield from item.steps
        else:
            yield item
