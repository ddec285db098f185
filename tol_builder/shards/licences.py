"""Licence normalisation: each source's own licence strings -> one SPDX-style `licence_id`.

Owns the mapping only (a pure function of the raw string, applied to the distinct raw values of a build);
the raw value is always kept beside the id. Forms met in the sources:

* iNat21: the names of its `licenses` list ("Attribution-NonCommercial License", "No known copyright
  restrictions"), or the bare licence id when the JSON has no `licenses` list (an id without its list says
  nothing: `LicenseRef-Unknown`);
* BIOSCAN-1M: "CreativeCommons - Attribution", "CreativeCommons - Attribution Non-Commercial Share-Alike";
* EOL: "cc-by-nc-sa-3.0", "cc-publicdomain", "cc-zero-1.0", "public domain", "no known copyright restrictions";
  iNaturalist calls CC0 "Public Domain Dedication" (CC0's own title), so that name maps to CC0-1.0;
* URLs: "http://creativecommons.org/licenses/by-nc/4.0/", ".../publicdomain/zero/1.0/", ".../publicdomain/mark/1.0/".

Ids: SPDX's where one exists (`CC-BY-4.0`, `CC-BY-NC-SA-3.0`, `CC0-1.0`); a Creative Commons licence whose
version the source does not say keeps its family without a version (`CC-BY-NC`: iNat21's and BIOSCAN's names
carry none); `LicenseRef-Public-Domain` (public domain marks), `LicenseRef-No-Known-Copyright-Restrictions`
(Flickr Commons' wording), `LicenseRef-All-Rights-Reserved`, `LicenseRef-Unknown` (empty or unrecognised). `commercial` says whether the
licence allows commercial use (null when unknown): `exclude_licences = ["CC-BY-NC*"]` or
`include_licences` with the commercial ids select on it.
"""

from __future__ import annotations

import re
from typing import Iterable

import pyarrow as pa

UNKNOWN = "LicenseRef-Unknown"
PUBLIC_DOMAIN = "LicenseRef-Public-Domain"
NO_KNOWN_RESTRICTIONS = "LicenseRef-No-Known-Copyright-Restrictions"
ALL_RIGHTS_RESERVED = "LicenseRef-All-Rights-Reserved"

LICENCE_MAP_SCHEMA = pa.schema([("licence", pa.string()), ("licence_id", pa.string()), ("commercial", pa.bool_())])

_VERSION = re.compile(r"(?<![\d.])(\d\.\d)(?![\d.])")
_WORD = re.compile(r"[a-z0-9]+")


def licence_id(raw: str | None) -> str:
    """The SPDX-style id of one raw licence string (see the module docstring)."""
    if raw is None:
        return UNKNOWN
    text = raw.strip().lower()
    if not text or text.isdigit():
        return UNKNOWN
    url = re.sub(r"^https?://(www\.)?", "", text)
    if url.startswith("creativecommons.org/"):
        text = url[len("creativecommons.org/"):].replace("/", " ")  # licenses/by-nc/4.0 -> words and a version
    words = _WORD.findall(text.replace("non-commercial", "noncommercial").replace("share-alike", "sharealike")
                          .replace("no-deriv", "noderiv"))
    joined = " ".join(words)
    version = _VERSION.search(text)
    if "cc0" in words or "zero" in words or "public domain dedication" in joined:  # CC0's own title
        return "CC0-1.0"
    if "no known copyright" in joined:
        return NO_KNOWN_RESTRICTIONS
    if "all rights reserved" in joined:
        return ALL_RIGHTS_RESERVED
    if "publicdomain" in words or "public domain" in joined:
        return PUBLIC_DOMAIN
    if not ("by" in words or "attribution" in words):
        return UNKNOWN
    parts = ["CC-BY"]
    if {"nc", "noncommercial"} & set(words):
        parts.append("NC")
    if {"nd", "noderivs", "noderivatives", "noderiv"} & set(words):
        parts.append("ND")
    elif {"sa", "sharealike"} & set(words):
        parts.append("SA")
    if version:
        parts.append(version.group(1))
    return "-".join(parts)


def commercial(lid: str) -> bool | None:
    """Whether a licence_id allows commercial use; None when unknown."""
    if lid == UNKNOWN:
        return None
    return "-NC" not in lid and lid != ALL_RIGHTS_RESERVED


def licence_map(raw_values: Iterable[str | None]) -> pa.Table:
    """The mapping of a build's distinct raw licences: licence, licence_id, commercial (sorted by licence)."""
    values = sorted({v for v in raw_values if v is not None})
    ids = [licence_id(v) for v in values]
    return pa.table({"licence": values, "licence_id": ids, "commercial": [commercial(i) for i in ids]},
                    schema=LICENCE_MAP_SCHEMA)
