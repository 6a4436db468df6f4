"""`singleshot.classes`: class identity by name, class maps, and the errors that list names."""

import json

import pytest
import torch

from singleshot.classes import load_class_map, match_classes, read_class_map

BG = "__background__"
MODEL = [BG, "cat", "dog", "bird"]


def test_same_names_same_order_is_the_identity_without_a_note():
    match = match_classes(MODEL, list(MODEL))
    assert match.identity and match.note is None
    assert match.model_to_dataset.tolist() == [0, 1, 2, 3]


def test_same_names_in_another_order_map_by_name_with_one_note():
    dataset = [BG, "bird", "cat", "dog"]
    match = match_classes(MODEL, dataset)
    assert not match.identity
    # model label -> dataset label, worked out by hand: cat 1 -> 2, dog 2 -> 3, bird 3 -> 1
    assert match.model_to_dataset.tolist() == [0, 2, 3, 1]
    assert match.dataset_to_model.tolist() == [0, 3, 1, 2]
    assert "\n" not in match.note and "another order" in match.note
    for label, name in enumerate(MODEL):
        assert dataset[int(match.model_to_dataset[label])] == name

    boxes = torch.arange(12, dtype=torch.float32).view(3, 4)
    detections = [
        {"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([3, 1, 2])}
    ]
    mapped = match.detections_to_dataset(detections)[0]
    assert mapped["labels"].tolist() == [1, 2, 3]
    assert torch.equal(mapped["boxes"], boxes) and mapped["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert match.labels_to_model(torch.tensor([1, 2, 3, 1])).tolist() == [3, 1, 2, 3]


def test_a_different_set_names_the_missing_and_extra_classes():
    with pytest.raises(ValueError) as error:
        match_classes(MODEL, [BG, "cat", "horse", "dog"])
    message = str(error.value)
    assert "in the dataset but not the model: horse" in message
    assert "in the model but not the dataset: bird" in message
    assert "--class-map" in message and "--init-from" in message


def test_a_class_map_relates_other_names_and_drops_unmapped_model_classes():
    match = match_classes(MODEL, [BG, "dog", "kitty"], {"kitty": "cat"})
    assert match.dataset_to_model.tolist() == [0, 2, 1]
    assert match.model_to_dataset.tolist() == [0, 2, 1, -1]
    assert "kitty -> cat" in match.note and "ignored: bird" in match.note
    detections = [
        {
            "boxes": torch.zeros(3, 4),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([3, 1, 2]),
        }
    ]
    mapped = match.detections_to_dataset(detections)[0]
    assert mapped["labels"].tolist() == [2, 1] and mapped["scores"].tolist() == pytest.approx([0.8, 0.7])


@pytest.mark.parametrize(
    ("dataset", "class_map", "message"),
    [
        ([BG, "kitty", "dog"], {"puppy": "dog"}, "dataset classes the dataset lacks: puppy"),
        ([BG, "kitty", "dog"], {"kitty": "lion"}, "model classes the model lacks: lion"),
        ([BG, "kitty", "dog"], {"dog": "bird"}, "in the dataset but not the model: kitty"),
        ([BG, "kitty", "cat"], {"kitty": "cat"}, "several dataset classes to one model class: cat"),
        ([BG, "cat", "cat"], None, "the dataset lists class names more than once: cat"),
    ],
)
def test_bad_class_maps_and_names_are_errors(dataset, class_map, message):
    with pytest.raises(ValueError, match=message):
        match_classes(MODEL, dataset, class_map)


def test_a_model_without_names_falls_back_to_the_index_with_a_note():
    match = match_classes(None, [BG, "a", "b"], model_count=3)
    assert match.identity and "no class names" in match.note and "index" in match.note
    with pytest.raises(ValueError, match="predicts 3 classes .* dataset has 2"):
        match_classes(None, [BG, "a", "b"], model_count=4)
    with pytest.raises(ValueError, match="needs the model's class names"):
        match_classes(None, [BG, "a", "b"], {"a": "b"}, model_count=3)


def test_class_map_files_in_yaml_and_json(tmp_path):
    (tmp_path / "map.yaml").write_text("kitty: cat\n# a comment\npuppy: dog\n")
    (tmp_path / "map.json").write_text(json.dumps({"kitty": "cat", "puppy": "dog"}))
    expected = {"kitty": "cat", "puppy": "dog"}
    assert read_class_map(tmp_path / "map.yaml") == expected == read_class_map(tmp_path / "map.json")
    assert load_class_map(str(tmp_path / "map.yaml")) == expected
    assert load_class_map({"a": "b"}) == {"a": "b"} and load_class_map(None) is None
    (tmp_path / "list.yaml").write_text("- cat\n- dog\n")
    with pytest.raises(ValueError, match="list.yaml: a class map is a mapping"):
        read_class_map(tmp_path / "list.yaml")
    (tmp_path / "numbers.yaml").write_text("kitty: 3\n")
    with pytest.raises(ValueError, match="numbers.yaml: class names must be strings"):
        read_class_map(tmp_path / "numbers.yaml")
    with pytest.raises(ValueError, match="missing.yaml: cannot read the class map"):
        read_class_map(tmp_path / "missing.yaml")


def test_init_from_takes_class_heads_by_name_and_resets_them_for_new_names():
    import singleshot
    from singleshot.training.setup import init_from_detector

    torch.manual_seed(0)
    source = singleshot.build_model("ssd160_compact", class_names=MODEL).eval()
    x = torch.randn(1, 3, 160, 160)
    reordered = singleshot.build_model("ssd160_compact", class_names=[BG, "bird", "cat", "dog"]).eval()
    assert init_from_detector(reordered, source.state_dict(), names=MODEL) == []
    with torch.no_grad():
        (_, conf_a), (_, conf_b) = source(x), reordered(x)
    torch.testing.assert_close(conf_b, conf_a[..., [0, 3, 1, 2]])  # bird, cat, dog by name
    other = singleshot.build_model("ssd160_compact", class_names=[BG, "horse", "cow"])
    kept = init_from_detector(other, source.state_dict(), names=MODEL)
    assert kept and all(name.startswith("head.conf.") for name in kept)  # nothing shared: all fresh

    some = singleshot.build_model("ssd160_compact", class_names=[BG, "horse", "dog", "cat", "cow"])
    initial = {name: tensor.clone() for name, tensor in some.state_dict().items()}
    assert init_from_detector(some, source.state_dict(), names=MODEL) == []
    theirs = source.state_dict()
    for name, tensor in some.state_dict().items():
        if name.startswith("head.conf."):  # (box, class) channels
            mine, before = tensor.unflatten(0, (-1, 5)), initial[name].unflatten(0, (-1, 5))
            assert torch.equal(
                mine[:, [0, 2, 3]], theirs[name].unflatten(0, (-1, 4))[:, [0, 2, 1]]
            )  # by name
            assert torch.equal(mine[:, [1, 4]], before[:, [1, 4]])  # horse and cow as initialised
            assert name.endswith("bias") or not torch.equal(mine[:, 0], before[:, 0])  # so copying shows
        else:
            assert torch.equal(tensor, theirs[name]), name


def test_init_from_note_says_what_became_of_the_class_predictors():
    from singleshot.training.setup import init_from_note

    kept = ["head.conf.0.weight"]
    assert init_from_note("a.pt", MODEL, list(MODEL), []) is None
    assert init_from_note("a.pt", MODEL, [BG, "bird", "cat", "dog"], []) == (
        "a.pt: class predictors reordered by name to the training set's order"
    )
    assert init_from_note("a.pt", MODEL, [BG, "horse", "cow"], kept) == (
        "a.pt shares no class: the class predictors start afresh for the training set's 2 classes; "
        "the backbone, extra layers and box predictors are copied"
    )
    assert init_from_note("a.pt", MODEL, [BG, "horse", "dog", "cow"], []) == (
        "a.pt: class predictors copied by name for 1 of the training set's 3 classes; horse, cow start afresh"
    )
    assert init_from_note("a.pt", MODEL, [BG, "bird", "cat"], []) == (
        "a.pt: class predictors of the training set's 2 classes copied by name from its 3"
    )
    assert init_from_note("a.pt", None, [BG, "cat"], kept).startswith(
        "a.pt names no classes and predicts another number: the class predictors start afresh for the "
        "training set's 1 class;"
    )
    assert init_from_note("a.pt", None, list(MODEL), []) == (
        "a.pt names no classes: its class predictors are copied in its own order"
    )
