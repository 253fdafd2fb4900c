"""Identity resolution: link the records of every feed into customers.

Each source system knows a person by its own identifiers (an email address, a phone number, a
loyalty card, a device id, a social handle). Records that share any *normalised* identifier belong
to the same customer, transitively: the customers are the connected components of the graph whose
nodes are identifiers and whose edges join the identifiers seen together on one record.

Why the graph is built on identifiers rather than records: there are far fewer distinct
identifiers than records (a person has a handful of identifiers and hundreds of events). All the
record-level work is set-based in DuckDB: distinct raw strings are normalised in SQL (Python
only for odd values and the ``phonenumbers`` check), edges come from the distinct combinations
of identifiers on records, components are found by SciPy in C, and each record then takes the
customer of its raw identifiers through a small lookup table rather than a join on its key.

Customer ids are stable across runs: a component holding identifiers that an existing customer
already owns keeps that customer's id; when a new record bridges two existing customers the older
one (earliest ``first_seen_at``) is kept and the merge is recorded in ``customer_merges``. New
components get ``C`` + a zero-padded counter, numbered in order of first appearance (then of their
smallest identifier), so that the same inputs always give the same ids.

The pure functions (normalisers, :func:`connected_components`, :func:`assign_customer_ids`) hold
the logic; :func:`resolve_identities` and :func:`evaluate_identity` are the DuckDB edges.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa

from features.contract import FEEDS, ID_TYPES
from features.sql import sql_identifier, sql_string

if TYPE_CHECKING:  # pragma: no cover
    import duckdb

    from omniretain.settings import Settings

CUSTOMER_ID_PREFIX = "C"
CUSTOMER_ID_DIGITS = 9

# A deliberately permissive address check: one "@", no spaces, a dot in the domain. Mail servers
# accept far stranger addresses, but for linking we only need to reject obvious junk
# ("n/a", "none", "foo@") that would otherwise glue unrelated people together.
_EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_WHITESPACE = re.compile(r"\s+")
_PHONE_SEPARATORS = re.compile(r"[\s\-.()/]")  # punctuation phonenumbers ignores too
_CARD_SEPARATORS = re.compile(r"[-./]")  # printed card numbers group digits: LC-0012-34


# ---- normalisers (pure) ---------------------------------------------------------------------
def normalise_email(raw: str | None) -> str | None:
    """Trim and lower-case an address; ``None`` when it is empty or not shaped like one.

    Lower-casing the local part is technically lossy but matches what every mailbox provider does
    in practice, and source systems disagree on case far more often than two people share one.
    """
    if raw is None:
        return None
    value = str(raw).strip().lower()
    if not value or not _EMAIL_PATTERN.match(value):
        return None
    return value


def normalise_phone(raw: str | None, default_region: str = "GB") -> str | None:
    """E.164 form of a phone number (``+447911123456``); ``None`` when it is not a number.

    Numbers without a country code are read as ``default_region``. Kept: numbers that
    ``phonenumbers`` deems valid, and numbers of a possible length in unlisted ranges unless
    they look like placeholders; a placeholder like ``0000000000`` shared by many records
    would otherwise merge unrelated people.
    """
    if raw is None:
        return None
    text = str(raw).strip()
    if not text:
        return None
    try:
        parsed = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException:
        return None
    if not (phonenumbers.is_valid_number(parsed) or _plausible_unlisted_number(parsed)):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _plausible_unlisted_number(parsed: phonenumbers.PhoneNumber) -> bool:
    """A number of a possible length outside the ranges ``phonenumbers`` lists as allocated.

    Real customer data holds numbers the library's metadata calls invalid (new or re-used
    ranges, such as UK 076xx mobiles); refusing them lost about one phone in ten here and
    split those customers. Placeholders are still refused: they have a run of one digit or
    count up (``07000 000000``, ``01234 567890``).
    """
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:  # not even "local only"
        return False
    national = str(parsed.national_number)
    if len(set(national)) < 3:
        return False
    return not any(run in national for run in ("1234567", "0000000"))


def _phone_candidate(
    raw: str, country_code: int, national_prefix: str | None, international_prefix: str | None
) -> str | None:
    """A cheap ``+<digits>`` form of a plainly written number, or None when unsure.

    Only separators are dropped and the region's own international / national prefixes are
    rewritten, which is what ``phonenumbers`` itself does for such strings; anything else
    (letters, extensions, other prefixes) returns None and takes the full parser.
    """
    compact = _PHONE_SEPARATORS.sub("", raw)
    if compact.startswith("+"):
        digits = compact[1:]
    elif not compact.isdigit():
        return None
    elif international_prefix and compact.startswith(international_prefix):
        digits = compact[len(international_prefix) :]
    elif national_prefix and compact.startswith(national_prefix):
        national = compact[len(national_prefix) :]
        return f"+{country_code}{national}" if national[:1] not in ("", "0") else None
    else:
        return None
    # Country codes never start with 0: leave such oddities to the full parser.
    return "+" + digits if digits.isdigit() and not digits.startswith("0") else None


def _phone_prefixes(region: str) -> tuple[int, str | None, str | None]:
    """Country code, national prefix and international prefix of a region (digits, or None)."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    country_code = phonenumbers.country_code_for_region(region)
    national_prefix = international_prefix = None
    if metadata is not None:
        if (
            metadata.national_prefix or ""
        ).isdigit() and not metadata.national_prefix_transform_rule:
            national_prefix = metadata.national_prefix
        if (metadata.international_prefix or "").isdigit():
            international_prefix = metadata.international_prefix
    return country_code, national_prefix, international_prefix


def normalise_phones(values: Iterable[str | None], default_region: str = "GB") -> list[str | None]:
    """:func:`normalise_phone` of many values, parsing each distinct number only once.

    The same number is typed many ways (``07911 123456``, ``+44 7911 123456``, ``0044-...``);
    they share one cheap candidate form, so ``phonenumbers`` (tens of microseconds a call) runs
    once per number rather than once per spelling. Same results as calling the scalar function.
    """
    region = default_region.upper()
    country_code, national_prefix, international_prefix = _phone_prefixes(region)
    by_candidate: dict[str, str | None] = {}
    results: list[str | None] = []
    for raw in values:
        candidate = (
            None
            if raw is None
            else _phone_candidate(str(raw), country_code, national_prefix, international_prefix)
        )
        if candidate is None:
            results.append(normalise_phone(raw, region))
            continue
        if candidate not in by_candidate:
            by_candidate[candidate] = normalise_phone(candidate, region)
        # A rejected candidate is re-read as typed: ``phonenumbers`` keeps the national prefix
        # of a number too short without it (``0102`` in DE is ``+490102``).
        results.append(by_candidate[candidate] or normalise_phone(raw, region))
    return results


# ---- the same normalisers in SQL, for the common spellings ---------------------------------
# Values of printable ASCII only (no tabs, no Unicode spaces or case rules) are normalised in
# DuckDB, a vectorised pass over millions of raw strings; anything else takes the Python
# functions above. A unit test holds the two equal.
_PLAIN_TEXT_SQL = "regexp_full_match({raw}, '[ -~]*')"
_DIGITS_SQL = "regexp_full_match({value}, '[1-9][0-9]*')"


def phone_compact_sql(raw: str) -> str:
    """SQL: ``raw`` without the separators :func:`_phone_candidate` drops (plain ASCII)."""
    return f"regexp_replace({raw}, '[ ().\\-/]', '', 'g')"


def phone_candidate_sql(compact: str, default_region: str) -> str:
    """SQL of :func:`_phone_candidate` given :func:`phone_compact_sql` (NULL when unsure)."""
    country_code, national_prefix, international_prefix = _phone_prefixes(default_region.upper())

    def plus(digits: str) -> str:
        return f"CASE WHEN {_DIGITS_SQL.format(value=digits)} THEN '+' || {digits} END"

    branches = [f"WHEN starts_with({compact}, '+') THEN {plus(f'substr({compact}, 2)')}"]
    branches.append(f"WHEN NOT regexp_full_match({compact}, '[0-9]+') THEN NULL")
    if international_prefix:
        rest = f"substr({compact}, {len(international_prefix) + 1})"
        branches.append(
            f"WHEN starts_with({compact}, {sql_string(international_prefix)}) THEN {plus(rest)}"
        )
    if national_prefix:
        rest = f"substr({compact}, {len(national_prefix) + 1})"
        branches.append(
            f"WHEN starts_with({compact}, {sql_string(national_prefix)}) THEN "
            f"CASE WHEN {_DIGITS_SQL.format(value=rest)} THEN '+{country_code}' || {rest} END"
        )
    return f"CASE {' '.join(branches)} END"


def normalised_sql(id_type: str, raw: str) -> str | None:
    """SQL of the normaliser of ``id_type`` for a plain-ASCII ``raw``; None for phones (they
    need ``phonenumbers``: see :func:`phone_candidate_sql`) and unknown types."""
    if id_type == "email":
        value = f"lower(trim({raw}))"
        return f"CASE WHEN regexp_full_match({value}, '[^@ ]+@[^@ ]+\\.[^@ .]+') THEN {value} END"
    if id_type == "social_handle":
        return f"nullif(ltrim(lower(replace({raw}, ' ', '')), '@'), '')"
    if id_type == "loyalty_card":
        return f"nullif(lower(regexp_replace({raw}, '[ ./\\-]', '', 'g')), '')"
    if id_type in ("device_id", "customer_ref"):
        return f"nullif(lower(replace({raw}, ' ', '')), '')"
    return None


def normalise_id(raw: str | None, id_type: str = "loyalty_card") -> str | None:
    """Trim, drop inner whitespace and lower-case a card number, device id or social handle.

    Social handles also lose a leading ``@`` (``@Jane_Doe`` and ``jane_doe`` are one account);
    loyalty cards lose the separators printed between digit groups (``LC-001`` is ``lc001``).
    """
    if raw is None:
        return None
    value = _WHITESPACE.sub("", str(raw)).lower()
    if id_type == "social_handle":
        value = value.lstrip("@")
    elif id_type == "loyalty_card":
        value = _CARD_SEPARATORS.sub("", value)
    return value or None


def normaliser_for(id_type: str, default_region: str) -> Callable[[str | None], str | None]:
    """The normaliser of one identifier type (raises ``KeyError`` for an unknown type)."""
    if id_type == "email":
        return normalise_email
    if id_type == "phone":
        return lambda raw: normalise_phone(raw, default_region)
    if id_type in ("loyalty_card", "device_id", "social_handle", "customer_ref"):
        return lambda raw: normalise_id(raw, id_type)
    raise KeyError(f"unknown identifier type {id_type!r}; known: {ID_TYPES}")


def normalise_identifier(id_type: str, raw: str | None, default_region: str = "GB") -> str | None:
    """Normalise one identifier of the given type."""
    return normaliser_for(id_type, default_region)(raw)


# ---- graph (pure) ---------------------------------------------------------------------------
def connected_components(n_nodes: int, left: Sequence[int], right: Sequence[int]) -> np.ndarray:
    """Component label of each node 0..n_nodes-1 given undirected edges ``left[i] - right[i]``.

    The label of a component is its smallest node, so labels do not depend on edge order.
    SciPy's graph search runs in C: a Python union-find cost about a microsecond per edge,
    seconds on millions of identifiers.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    if n_nodes == 0:
        return np.zeros(0, dtype=np.int64)
    left_nodes = np.asarray(left, dtype=np.int64)
    right_nodes = np.asarray(right, dtype=np.int64)
    graph = coo_matrix(
        (np.ones(len(left_nodes), dtype=np.int8), (left_nodes, right_nodes)),
        shape=(n_nodes, n_nodes),
    ).tocsr()
    _, labels = scipy_components(graph, directed=False)
    # Nodes are scanned in order, so a label first appears at its component's smallest node.
    _, smallest = np.unique(labels, return_index=True)
    return smallest[labels].astype(np.int64)


def format_customer_id(number: int) -> str:
    """``C000000042`` for 42."""
    return f"{CUSTOMER_ID_PREFIX}{number:0{CUSTOMER_ID_DIGITS}d}"


def customer_number(customer_id: str) -> int:
    """Inverse of :func:`format_customer_id` (0 for ids of another shape)."""
    digits = customer_id[len(CUSTOMER_ID_PREFIX) :]
    return int(digits) if customer_id.startswith(CUSTOMER_ID_PREFIX) and digits.isdigit() else 0


def assign_customer_ids(
    nodes: pd.DataFrame, previous_customers: pd.DataFrame, next_number: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every component a customer id, reusing the ids of the previous run.

    Args:
        nodes: one row per identifier: ``component`` (int label), ``first_seen_at`` and
            ``previous_customer_id`` (the customer that owned the identifier before, or null).
        previous_customers: ``customer_id``, ``first_seen_at`` of the previous run's customers.
        next_number: the first unused customer number.

    Returns:
        ``(component -> customer_id, merges)``; merges has ``merged_customer_id`` and
        ``into_customer_id``, one row per previous customer absorbed by an older one.
    """
    components = (
        nodes.groupby("component", sort=True)["first_seen_at"]
        .min()
        .rename("first_seen_at")
        .reset_index()
    )
    owned = nodes.loc[nodes["previous_customer_id"].notna(), ["component", "previous_customer_id"]]
    owned = owned.drop_duplicates().rename(columns={"previous_customer_id": "customer_id"})
    ages = previous_customers[["customer_id", "first_seen_at"]].rename(
        columns={"first_seen_at": "customer_since"}
    )
    owned = owned.merge(ages, on="customer_id", how="left")
    # Oldest customer first (unknown age last), ties broken by the id itself: deterministic.
    owned["_unknown_age"] = owned["customer_since"].isna()
    owned = owned.sort_values(["component", "_unknown_age", "customer_since", "customer_id"])
    owned["_rank"] = owned.groupby("component").cumcount()
    keepers = owned[owned["_rank"] == 0].sort_values("component")
    # A previous customer can only be kept by one component (components never split when records
    # are only added, but a changed normaliser could split one): the smallest label wins.
    keepers = keepers.drop_duplicates("customer_id", keep="first")[["component", "customer_id"]]
    absorbed = owned[owned["_rank"] > 0][["component", "customer_id"]]
    merges = absorbed.merge(
        keepers.rename(columns={"customer_id": "into_customer_id"}), on="component", how="inner"
    )
    merges = merges.rename(columns={"customer_id": "merged_customer_id"})[
        ["merged_customer_id", "into_customer_id"]
    ].reset_index(drop=True)

    new = components[~components["component"].isin(keepers["component"])]
    new = new.sort_values(["first_seen_at", "component"], na_position="last")
    new_ids = [format_customer_id(next_number + offset) for offset in range(len(new))]
    new = pd.DataFrame({"component": new["component"].to_numpy(), "customer_id": new_ids})
    assigned = pd.concat([keepers, new], ignore_index=True).sort_values("component")
    return assigned.reset_index(drop=True), merges


# ---- DuckDB edge ----------------------------------------------------------------------------
def _raw_ids_sql() -> str:
    """Distinct raw identifiers of every staging table: first time seen and how many rows carry
    them (a hash aggregate per column; no per-record table)."""
    parts = [
        f"SELECT {sql_string(id_type)} AS id_type, {sql_identifier(column)} AS raw_value, "
        f"min({sql_identifier(feed.time_column)}) AS first_seen_at, count(*) AS n_rows "
        f"FROM raw_{feed.name} WHERE {sql_identifier(column)} IS NOT NULL "
        f"GROUP BY {sql_identifier(column)}"
        for feed in FEEDS.values()
        for column, id_type in feed.id_columns.items()
    ]
    return (
        "SELECT id_type, raw_value, min(first_seen_at) AS first_seen_at, "
        f"sum(n_rows)::BIGINT AS n_rows FROM ({' UNION ALL '.join(parts)}) "
        "GROUP BY id_type, raw_value"
    )


def _keyed_by_record(feed_name: str) -> bool:
    """A feed whose rows are unique only with more columns than its key (CRM history): a record
    is all the rows of one key, and links all their identifiers."""
    feed = FEEDS[feed_name]
    return feed.unique_columns != (feed.key,)


def _edges_sql(feed_name: str) -> str | None:
    """Edges ``(node, anchor)`` that the records of one feed add to the identifier graph.

    A record links its identifiers: each to the smallest (the anchor), a star. Records are
    read as their distinct combinations of raw identifiers (one person repeats the same few
    combinations over many events), each raw value looked up as a node in ``_raw_nodes``.
    A feed with one identifier column adds no edge.
    """
    feed = FEEDS[feed_name]
    columns = list(feed.id_columns.items())
    keyed = _keyed_by_record(feed_name)
    if len(columns) < 2 and not keyed:
        return None
    selected = [sql_identifier(column) for column, _ in columns] + (
        [sql_identifier(feed.key)] if keyed else []
    )
    joins = " ".join(
        f"LEFT JOIN _raw_nodes n{i} ON n{i}.id_type = {sql_string(id_type)} "
        f"AND n{i}.raw_value = c.{sql_identifier(column)}"
        for i, (column, id_type) in enumerate(columns)
    )
    nodes = [f"n{i}.node" for i in range(len(columns))]
    anchor = f"least({', '.join(nodes)})"
    if keyed:
        anchor = f"min({anchor}) OVER (PARTITION BY c.{sql_identifier(feed.key)})"
    return f"""
        SELECT node, anchor FROM (
            SELECT unnest([{", ".join(nodes)}]) AS node, {anchor} AS anchor
            FROM (SELECT DISTINCT {", ".join(selected)} FROM raw_{feed.name}) c {joins})
        WHERE node <> anchor"""


def create_raw_customers(con: duckdb.DuckDBPyConnection) -> None:
    """The temp table ``_raw_customers``: every raw identifier string with its customer.

    A record's customer is the customer of any of its identifiers (they are all in one
    component): looking raw strings up in this table, a few hundred thousand rows, is far
    cheaper than joining millions of records by their keys.
    """
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _raw_customers AS
        SELECT n.id_type, n.raw_value, l.customer_id
        FROM identifier_normalisation n JOIN identity_links l USING (id_type, id_value)""")


def record_customer_sql(feed_name: str, alias: str) -> tuple[str, str]:
    """``(joins, expression)``: LEFT JOINs to add after ``raw_<feed> <alias>`` and the SQL of the
    row's ``customer_id`` (NULL when no identifier resolves). Needs ``_raw_customers``."""
    feed = FEEDS[feed_name]
    columns = list(feed.id_columns.items())
    if not columns:
        return "", "CAST(NULL AS VARCHAR)"
    prefix = f"_rc_{feed.name}_"
    joins = " ".join(
        f"LEFT JOIN _raw_customers {prefix}{i} ON {prefix}{i}.id_type = {sql_string(id_type)} "
        f"AND {prefix}{i}.raw_value = {alias}.{sql_identifier(column)}"
        for i, (column, id_type) in enumerate(columns)
    )
    expression = f"coalesce({', '.join(f'{prefix}{i}.customer_id' for i in range(len(columns)))})"
    if not _keyed_by_record(feed_name):
        return joins, expression
    # All rows of a key are one record: the key's customer, whichever row names it.
    key = sql_identifier(feed.key)
    per_key = (
        f"SELECT {alias}.{key} AS record_key, max({expression}) AS customer_id "
        f"FROM raw_{feed.name} {alias} {joins} GROUP BY {alias}.{key}"
    )
    return (
        f"LEFT JOIN ({per_key}) {prefix}key ON {prefix}key.record_key = {alias}.{key}",
        f"{prefix}key.customer_id",
    )


def _record_customers_sql() -> str:
    """``record_customers`` from the unified event tables (their rows carry ``source_feed``,
    ``source_id`` and the resolved ``customer_id``); one row per record of a keyed feed."""
    parts = []
    for table in dict.fromkeys(feed.target_table for feed in FEEDS.values() if feed.id_columns):
        keyed = any(
            _keyed_by_record(feed.name) for feed in FEEDS.values() if feed.target_table == table
        )
        parts.append(
            f"SELECT {'DISTINCT ' if keyed else ''}source_feed, source_id, customer_id "
            f"FROM {sql_identifier(table)} WHERE customer_id IS NOT NULL"
        )
    return "\nUNION ALL\n".join(parts)


def create_record_customers_view(con: duckdb.DuckDBPyConnection) -> None:
    """``record_customers`` (``source_feed``, ``source_id``, ``customer_id``) as a view over the
    unified event tables, which carry all three: always in step with them (an erasure that
    deletes a person's events deletes their records too) and free to build. A copy in a table
    cost 4-5 s and 18 M rows at 100,000 customers. Warehouses of earlier versions held a table
    of that name: it is dropped first."""
    kind = con.execute(
        "SELECT table_type FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = 'record_customers'"
    ).fetchall()
    if kind and kind[0][0] != "VIEW":
        con.execute("DROP TABLE record_customers")
    con.execute(f"CREATE OR REPLACE VIEW record_customers AS {_record_customers_sql()}")


def _all_records_sql() -> str:
    """Every accepted record's key, whatever its identifiers."""
    return "\nUNION ALL\n".join(
        f"SELECT '{feed.name}' AS source_feed, \"{feed.key}\" AS source_id FROM raw_{feed.name}"
        for feed in FEEDS.values()
    )


IDENTITY_DDL = """
CREATE TABLE IF NOT EXISTS identifier_normalisation (
    id_type VARCHAR, raw_value VARCHAR, id_value VARCHAR);
CREATE TABLE IF NOT EXISTS identity_links (
    customer_id VARCHAR, id_type VARCHAR, id_value VARCHAR, first_seen_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS customers (
    customer_id VARCHAR, first_seen_at TIMESTAMP, n_source_ids BIGINT, n_records BIGINT);
CREATE TABLE IF NOT EXISTS customer_merges (
    merged_customer_id VARCHAR, into_customer_id VARCHAR, merged_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS customer_number_floor (value BIGINT);
"""


def normalisation_sql(source: str, default_region: str) -> str:
    """SELECT over ``source`` (``id_type``, ``raw_value``) giving ``id_value`` where SQL can
    decide it, else ``phone_candidate`` (a phone to check with ``phonenumbers``) or
    ``in_python`` (an odd value for the Python normaliser of its type)."""
    by_type = " ".join(
        f"WHEN {sql_string(id_type)} THEN {normalised_sql(id_type, 'raw_value')}"
        for id_type in ID_TYPES
        if normalised_sql(id_type, "raw_value") is not None
    )
    known = ", ".join(map(sql_string, ID_TYPES))
    plain = _PLAIN_TEXT_SQL.format(raw="raw_value")
    return f"""
        SELECT id_type, raw_value, id_value, phone_candidate,
               NOT _plain OR id_type NOT IN ({known})
                   OR (id_type = 'phone' AND phone_candidate IS NULL) AS in_python
        FROM (SELECT id_type, raw_value, _plain,
                     CASE WHEN _plain THEN CASE id_type {by_type} END END AS id_value,
                     {phone_candidate_sql("_compact", default_region)} AS phone_candidate
              FROM (SELECT id_type, raw_value, _plain,
                           CASE WHEN _plain AND id_type = 'phone'
                                THEN {phone_compact_sql("raw_value")} END AS _compact
                    FROM (SELECT id_type, raw_value, {plain} AS _plain FROM {source})))"""


def _normalise_new_raw_values(con: duckdb.DuckDBPyConnection, default_region: str) -> int:
    """Normalise the raw identifier strings never seen before; cached in a table.

    Reads ``_raw_ids`` (distinct raw strings). New strings are normalised in SQL when they are
    plain ASCII; ``phonenumbers`` (tens of microseconds a call) then checks each distinct phone
    candidate once, and only odd strings go through the Python normalisers one by one.
    """
    region = default_region.upper()
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _new_raw AS {
        normalisation_sql(
            "(SELECT id_type, raw_value FROM _raw_ids EXCEPT "
            "SELECT id_type, raw_value FROM identifier_normalisation)",
            region,
        )
    }""")
    n_new = int(con.execute("SELECT count(*) FROM _new_raw").fetchall()[0][0])
    if not n_new:
        con.execute("DROP TABLE _new_raw")
        return 0
    candidates = [
        row[0]
        for row in con.execute(
            "SELECT DISTINCT phone_candidate FROM _new_raw "
            "WHERE phone_candidate IS NOT NULL AND NOT in_python"
        ).fetchall()
    ]
    values = [normalise_phone(candidate, region) for candidate in candidates]
    phones = pa.table(
        {
            "phone_candidate": pa.array(candidates, pa.string()),
            "phone_value": pa.array(values, pa.string()),
        }
    )
    # A rejected candidate is re-read as typed, as :func:`normalise_phones` does.
    rejected = pa.table(
        {"phone_candidate": [c for c, v in zip(candidates, values, strict=True) if v is None]},
        schema=pa.schema([("phone_candidate", pa.string())]),
    )
    con.register("_rejected_candidates", rejected)
    con.execute("""
        UPDATE _new_raw SET in_python = true
        WHERE NOT in_python
          AND phone_candidate IN (SELECT phone_candidate FROM _rejected_candidates)""")
    con.unregister("_rejected_candidates")
    odd_rows = con.execute("SELECT id_type, raw_value FROM _new_raw WHERE in_python").fetchall()
    odd = pa.table(
        {
            "id_type": pa.array([id_type for id_type, _ in odd_rows], pa.string()),
            "raw_value": pa.array([raw for _, raw in odd_rows], pa.string()),
            "odd_value": pa.array(
                [normaliser_for(id_type, region)(raw) for id_type, raw in odd_rows], pa.string()
            ),
        }
    )
    con.register("_phone_values", phones)
    con.register("_odd_values", odd)
    con.execute("""
        INSERT INTO identifier_normalisation
        SELECT n.id_type, n.raw_value,
               CASE WHEN n.in_python THEN o.odd_value
                    WHEN n.phone_candidate IS NOT NULL THEN p.phone_value
                    ELSE n.id_value END
        FROM _new_raw n
        LEFT JOIN _phone_values p ON NOT n.in_python AND p.phone_candidate = n.phone_candidate
        LEFT JOIN _odd_values o ON n.in_python AND o.id_type = n.id_type
                               AND o.raw_value = n.raw_value""")
    con.unregister("_phone_values")
    con.unregister("_odd_values")
    con.execute("DROP TABLE _new_raw")
    return n_new


def resolve_identities(
    con: duckdb.DuckDBPyConnection, default_region: str, now: datetime
) -> dict[str, int]:
    """Rebuild ``identity_links``, the unified event tables, ``record_customers`` and
    ``customers`` from the staging tables.

    Runs inside the caller's transaction. Returns counts for the ingest report.
    """
    con.execute(IDENTITY_DDL)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _raw_ids AS {_raw_ids_sql()}")
    _normalise_new_raw_values(con, default_region)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _raw_normalised AS
        SELECT r.id_type, r.raw_value, n.id_value, r.first_seen_at, r.n_rows
        FROM _raw_ids r JOIN identifier_normalisation n USING (id_type, raw_value)
        WHERE n.id_value IS NOT NULL""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _identifiers AS
        SELECT (row_number() OVER (ORDER BY id_type, id_value) - 1)::BIGINT AS node,
               id_type, id_value, first_seen_at
        FROM (SELECT id_type, id_value, min(first_seen_at) AS first_seen_at
              FROM _raw_normalised GROUP BY id_type, id_value)""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _raw_nodes AS
        SELECT r.id_type, r.raw_value, i.node
        FROM _raw_normalised r JOIN _identifiers i USING (id_type, id_value)""")
    edges_sql = [sql for sql in map(_edges_sql, FEEDS) if sql is not None]
    edges = con.execute(
        f"SELECT DISTINCT node, anchor FROM ({' UNION ALL '.join(edges_sql)})"
    ).fetchnumpy()
    n_nodes = con.execute("SELECT count(*) FROM _identifiers").fetchall()[0][0]
    labels = connected_components(int(n_nodes), edges["node"], edges["anchor"])

    nodes = con.execute("""
        SELECT i.node, i.first_seen_at, l.customer_id AS previous_customer_id
        FROM _identifiers i
        LEFT JOIN identity_links l USING (id_type, id_value)
        ORDER BY i.node""").df()
    nodes["component"] = labels[nodes["node"].to_numpy()] if len(nodes) else []
    previous = con.execute("SELECT customer_id, first_seen_at FROM customers").df()
    # Never hand out an id again, not even an erased customer's (floor kept by erase).
    next_number = 1 + int(
        con.execute(
            "SELECT coalesce(max(try_cast(substr(customer_id, 2) AS BIGINT)), 0) FROM "
            "(SELECT customer_id FROM customers UNION ALL SELECT merged_customer_id "
            "FROM customer_merges UNION ALL SELECT 'C' || value FROM customer_number_floor)"
        ).fetchall()[0][0]
    )
    assigned, merges = assign_customer_ids(nodes, previous, next_number)
    node_customers = nodes[["node", "component"]].merge(assigned, on="component", how="left")
    con.register("_node_customers", node_customers[["node", "customer_id"]])
    con.register("_merges", merges)
    con.execute("""
        CREATE OR REPLACE TABLE identity_links AS
        SELECT nc.customer_id, i.id_type, i.id_value, i.first_seen_at
        FROM _identifiers i JOIN _node_customers nc USING (node)
        ORDER BY nc.customer_id, i.id_type, i.id_value""")
    # The event tables look each row's customer up by its raw identifiers; the record ->
    # customer map is then read back from them (one lookup per record, not two).
    from features.ingest import build_unified_tables  # ingest imports this module

    build_unified_tables(con)
    create_record_customers_view(con)
    con.execute("""
        CREATE OR REPLACE TABLE customers AS
        SELECT l.customer_id, l.first_seen_at, l.n_source_ids, coalesce(r.n_records, 0) AS n_records
        FROM (SELECT customer_id, min(first_seen_at) AS first_seen_at, count(*) AS n_source_ids
              FROM identity_links GROUP BY customer_id) l
        LEFT JOIN (SELECT customer_id, count(*) AS n_records FROM record_customers
                   GROUP BY customer_id) r USING (customer_id)
        ORDER BY l.customer_id""")
    con.execute(
        "INSERT INTO customer_merges SELECT merged_customer_id, into_customer_id, ? FROM _merges",
        [now],
    )
    con.unregister("_node_customers")
    con.unregister("_merges")

    n_records = con.execute(f"SELECT count(*) FROM ({_all_records_sql()})").fetchall()[0][0]
    n_linked = con.execute("SELECT count(*) FROM record_customers").fetchall()[0][0]
    n_links = con.execute("SELECT coalesce(sum(n_rows), 0) FROM _raw_normalised").fetchall()[0][0]
    for table in ("_raw_ids", "_raw_normalised", "_identifiers", "_raw_nodes", "_raw_customers"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return {
        "customers": int(assigned["customer_id"].nunique()) if len(assigned) else 0,
        "identifiers": int(n_nodes),
        "links": int(n_links),
        "records": int(n_records),
        "linked_records": int(n_linked),
        "records_without_identifier": int(n_records - n_linked),
        "merges": len(merges),
    }


# ---- evaluation against the simulator's truth -----------------------------------------------
_TRUTH_KEY_CANDIDATES = ("record_key", "key", "record_id", "source_id")


def pairwise_scores(cells: pd.DataFrame) -> dict[str, float]:
    """Pairwise precision / recall from per-(customer, person) record counts.

    Args:
        cells: columns ``customer_id`` (null = unlinked, its own singleton), ``person_id``, ``n``.

    A pair of records is predicted when both have the same (non-null) customer, true when both
    belong to the same person. Counting pairs per cell (``n * (n - 1) / 2``) avoids enumerating
    the quadratic number of pairs.
    """

    def pairs(counts: pd.Series) -> float:
        values = counts.to_numpy(dtype=np.float64)
        return float((values * (values - 1) / 2).sum())

    linked = cells[cells["customer_id"].notna()]
    true_positive = pairs(linked["n"])
    predicted = pairs(linked.groupby("customer_id")["n"].sum())
    actual = pairs(cells.groupby("person_id")["n"].sum())
    actual_identified = pairs(linked.groupby("person_id")["n"].sum())
    return {
        "precision": true_positive / predicted if predicted else 1.0,
        "recall": true_positive / actual if actual else 1.0,
        "recall_identified": true_positive / actual_identified if actual_identified else 1.0,
        "true_positive_pairs": true_positive,
        "predicted_pairs": predicted,
        "true_pairs": actual,
        "true_pairs_identified": actual_identified,
    }


def evaluate_identity(settings: Settings) -> dict[str, Any]:
    """Score the resolution in the warehouse against ``truth_dir/records.parquet``.

    Only accepted records take part. ``recall`` counts every same-person pair, including records
    that carry no identifier at all (anonymous web events, which no method could link);
    ``recall_identified`` restricts the true pairs to records that carry at least one valid
    identifier, the part that is linkable at all.
    """
    import duckdb

    truth_path = Path(settings.truth_dir) / "records.parquet"
    if not truth_path.exists():
        raise FileNotFoundError(f"{truth_path} not found: run `omniretain simulate` first")
    if not Path(settings.warehouse_path).exists():
        raise FileNotFoundError(
            f"{settings.warehouse_path} not found: run `omniretain ingest` first"
        )
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        truth_columns = [
            row[0]
            for row in con.execute(
                f"DESCRIBE SELECT * FROM read_parquet('{truth_path}')"
            ).fetchall()
        ]
        key_column = next((c for c in _TRUTH_KEY_CANDIDATES if c in truth_columns), None)
        if key_column is None or "feed" not in truth_columns or "person_id" not in truth_columns:
            raise ValueError(
                f"{truth_path}: expected columns feed, person_id and one of "
                f"{_TRUTH_KEY_CANDIDATES}; found {truth_columns}"
            )
        cells = con.execute(f"""
            WITH truth AS (
                SELECT DISTINCT feed AS source_feed, CAST("{key_column}" AS VARCHAR) AS source_id,
                       CAST(person_id AS VARCHAR) AS person_id
                FROM read_parquet('{truth_path}')),
            accepted AS ({_all_records_sql()})
            SELECT rc.customer_id, t.person_id, count(*) AS n
            FROM accepted a
            JOIN truth t USING (source_feed, source_id)
            LEFT JOIN record_customers rc USING (source_feed, source_id)
            GROUP BY ALL""").df()
        n_accepted = con.execute(f"SELECT count(*) FROM ({_all_records_sql()})").fetchall()[0][0]
    finally:
        con.close()
    scores: dict[str, Any] = pairwise_scores(cells)
    scores.update(
        {
            "records_accepted": int(n_accepted),
            "records_scored": int(cells["n"].sum()),
            "customers": int(cells["customer_id"].nunique()),
            "persons": int(cells["person_id"].nunique()),
        }
    )
    return scores
