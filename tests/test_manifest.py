"""Stage outputs on disk: an empty dataset round-trips, so a stage that wrote one can still skip."""
from __future__ import annotations

import datasets

from distilforge.manifest import Stage, load_dataset_dir, outputs_intact, save_dataset


def test_an_empty_dataset_loads_back_with_its_columns(tmp_path):
    feats = datasets.Features({"id": datasets.Value("string"), "reason": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"id": [], "reason": []}, features=feats)
    h = save_dataset(ds, tmp_path / "rejected")
    back = load_dataset_dir(tmp_path / "rejected")  # datasets' own load_from_disk raises IndexError here
    assert len(back) == 0 and back.features == feats


def test_a_stage_with_an_empty_output_is_current_on_rerun(tmp_path):
    feats = datasets.Features({"id": datasets.Value("string")})

    def run_once() -> bool:
        st = Stage(tmp_path / "curate", "curate", {"generate": "abc"}, {"k": 1})
        if st.is_current():
            return False
        st.begin()
        st.save("kept", datasets.Dataset.from_dict({"id": ["a"]}, features=feats))
        st.save("rejected", datasets.Dataset.from_dict({"id": []}, features=feats))
        m = st.finish()
        assert outputs_intact(st.dir, m)
        return True

    assert run_once() is True
    assert run_once() is False  # skipped: both outputs, the empty one included, verify
