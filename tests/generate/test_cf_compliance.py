"""The netCDF outputs pass the CF checker (cfchecker, NCAS/CEDA), which also fails a broken file.

cfchecker 4.1 downloads its tables at run time; tests may not, so they get local tables:

- the standard name table: ``$CF_STANDARD_NAME_TABLE`` when set (the full XML from
  cfconventions.org), else a table of just the names these outputs use, with the canonical
  units of CF standard name table version 93. A standard name missing from it is reported as
  an error, so the short table can only make the check stricter.
- empty area-type and region tables: they are consulted only for variables whose
  standard_name is ``area_type`` or ``region``, and the outputs have none.

cfchecker 4.1 knows CF up to 1.8, so the files are checked against CF-1.8 and the two
messages about the file declaring the newer ``CF-1.10`` are the only ones set aside.
"""

from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import pytest

from simdiff.data.stores.training import TrainingStore
from simdiff.generate.output import create_partial, finalize, output_attrs, write_block
from simdiff.generate.template import forecast_template

cfchecks = pytest.importorskip("cfchecker.cfchecks", reason="cfchecker not installed (pip install cfchecker)")

# name -> canonical units, from CF standard name table v93
CANONICAL_UNITS = {
    "realization": "1",
    "forecast_reference_time": "s",
    "forecast_period": "s",
    "time": "s",
    "latitude": "degree_north",
    "longitude": "degree_east",
    "air_temperature": "K",
    "precipitation_flux": "kg m-2 s-1",
}
# cfchecker 4.1 predates CF-1.9; these are its messages about the file's newer Conventions.
NEWER_CONVENTIONS = (
    "does not appear to contain CF Convention data",
    "Inconsistency - This netCDF file appears",
)


def tables(tmp_path: Path) -> dict[str, str]:
    entries = "".join(f'<entry id="{n}"><canonical_units>{u}</canonical_units></entry>\n'
                      for n, u in CANONICAL_UNITS.items())
    std = tmp_path / "cf-standard-name-table.xml"
    std.write_text(f'<?xml version="1.0"?>\n<standard_name_table><version_number>93</version_number>'
                   f"<last_modified>2026-03-17T10:53:20Z</last_modified>\n{entries}</standard_name_table>\n")
    area, region = tmp_path / "area-type-table.xml", tmp_path / "region-list.xml"
    version = "<version_number>1</version_number><date>2026-01-01</date>"
    area.write_text(f'<?xml version="1.0"?>\n<area_type_table>{version}</area_type_table>\n')
    region.write_text(f'<?xml version="1.0"?>\n<standard_region_list>{version}</standard_region_list>\n')
    return {"cfStandardNamesXML": os.environ.get("CF_STANDARD_NAME_TABLE", str(std)),
            "cfAreaTypesXML": str(area), "cfRegionNamesXML": str(region)}


def cf_problems(path: Path, tmp_path: Path, categories: tuple[str, ...] = ("FATAL", "ERROR")) -> list[str]:
    """The checker's messages in ``categories`` (CF-1.8 rules), bar the newer-Conventions ones."""
    checker = cfchecks.CFChecker(version=cfchecks.CFVersion((1, 8)), silent=True, **tables(tmp_path))
    results = checker.checker(str(path))
    found = []
    for where, res in [("global", results["global"]), *results["variables"].items()]:
        for category in categories:
            found += [f"{where}: {m}" for m in res[category] if not any(s in m for s in NEWER_CONVENTIONS)]
    return found


def publish(store: TrainingStore, target: Path) -> Path:
    t = forecast_template(store, [0, 1], [1, 4], [0, 1, 2])
    create_partial(target, t, output_attrs(config="a: 1\n", checksums={"train.zarr": "0" * 64}, seed=0,
                                           title="CF test", command="pytest"))
    for init in (1, 4):
        block = t.drop_vars("written").isel(init_time=0, drop=True).fillna(1.0).compute()
        write_block(target, block, init=init)
    return finalize(target)


def test_latlon_forecast_is_cf_compliant(latlon_store: TrainingStore, tmp_path: Path) -> None:
    path = publish(latlon_store, tmp_path / "forecast.nc")
    assert cf_problems(path, tmp_path, ("FATAL", "ERROR", "WARN")) == []


def test_model_time_forecast_is_cf_compliant(model_time_store: TrainingStore, tmp_path: Path) -> None:
    path = publish(model_time_store, tmp_path / "forecast.nc")
    assert cf_problems(path, tmp_path) == []


def test_checker_fails_a_broken_file(latlon_store: TrainingStore, tmp_path: Path) -> None:
    path = publish(latlon_store, tmp_path / "forecast.nc")
    with netCDF4.Dataset(path, "a") as nc:
        nc["t2m"].units = "degrees_kelvinish"
        nc["lead_time"].standard_name = "forecast_periodicity"
    problems = cf_problems(path, tmp_path)
    assert any("t2m" in p and "units" in p.lower() for p in problems), problems
    assert any("lead_time" in p and "forecast_periodicity" in p for p in problems), problems
