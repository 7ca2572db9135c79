"""The projet document: livrable choice, current etape, calendrier."""

from __future__ import annotations

from datetime import date

import pytest

from indexer.errors import ConfigError, LivrableNotFound
from indexer.projet import CALENDRIER, Etape, Projet, current_etape, select_livrable


def etapes(*pairs: tuple[str, str | None]) -> list[Etape]:
    return [Etape(statut=s, date_debut=date.fromisoformat(d) if d else None) for s, d in pairs]


TODAY = date(2026, 11, 28)


def test_latest_begun_etape_is_current() -> None:
    steps = etapes(("investigation", "2024-01-10"), ("prod_en_cours", "2025-06-01"), ("disponible", "2027-01-01"))
    assert current_etape(steps, TODAY) == steps[1]


def test_undated_etapes_take_the_last_and_future_ones_the_first() -> None:
    undated = etapes(("investigation", None), ("convention_signee", None))
    assert current_etape(undated, TODAY) == undated[1]
    future = etapes(("investigation", "2027-01-01"), ("prod_en_cours", "2028-01-01"))
    assert current_etape(future, TODAY) == future[0]
    assert current_etape([], TODAY) is None


def test_same_day_etapes_take_the_later_one() -> None:
    steps = etapes(("controle_en_cours", "2026-05-01"), ("realise", "2026-05-01"))
    assert current_etape(steps, TODAY) == steps[1]


def test_calendrier_codes() -> None:
    assert CALENDRIER == {
        "investigation": "03", "convention_signee": "03", "marche_public_en_cours": "03",
        "prod_en_cours": "02", "controle_en_cours": "02", "realise": "01", "disponible": "01", "obsolete": "01",
    }


def projet_with(*livrables: dict[str, object]) -> Projet:
    return Projet.from_document({"_id": "p1", "nom": "PCRS Test", "livrables": list(livrables)})


def test_livrable_selection() -> None:
    one = projet_with({"nom": "ortho"})
    assert select_livrable(one, None, "/data").nom == "ortho"
    two = projet_with({"nom": "a", "stockage": "http", "stockage_params": {"url": "http://h/a/"}},
                      {"nom": "b", "stockage": "http", "stockage_params": {"url": "http://h/b"}})
    assert select_livrable(two, None, "http://h/b/").nom == "b"
    assert select_livrable(two, "a", None).nom == "a"
    with pytest.raises(LivrableNotFound, match="livrable 'c' not found in projet 'PCRS Test'"):
        select_livrable(two, "c", None)
    with pytest.raises(LivrableNotFound, match=r"several livrables \('a', 'b'\): choose one with --livrable"):
        select_livrable(two, None, "/elsewhere")


def test_invalid_document_names_the_field() -> None:
    with pytest.raises(ConfigError, match="invalid projet document: etapes.0.date_debut"):
        Projet.from_document({"_id": "x", "etapes": [{"statut": "realise", "date_debut": "not a date"}]})
