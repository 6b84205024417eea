"""Class names for the page's class pickers: the 1000 ImageNet names (from torchvision's weight
metadata, which ships with the package, so no download), the digits 0-9, or plain ids."""
from typing import Iterable, List, Sequence, Union

from autoregressive.utils.cli import UserError

IMAGENET_CLASSES = 1000


def imagenet_names() -> List[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


class ClassNames:
    """A model's classes as picker choices ("207: golden retriever"; a digit is its own name, "7") and
    the way back from a picked or typed entry to the class id."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.choices = [name if name == str(index) else f"{index}: {name}" for index, name in enumerate(names)]
        self._by_text = {text.lower(): index for index, text in enumerate(self.choices)}
        self._by_text.update({name.lower(): index for index, name in enumerate(names)})

    @classmethod
    def for_model(cls, num_classes: int, imagenet: bool) -> "ClassNames":
        """ImageNet names for a 1000-class model that makes VQ pictures, else the ids themselves."""
        if imagenet and num_classes == IMAGENET_CLASSES:
            return cls(imagenet_names())
        return cls([str(index) for index in range(num_classes)])

    def __len__(self) -> int:
        return len(self.names)

    def choice(self, index: int) -> str:
        return self.choices[index]

    def parse(self, entry: Union[str, int], field: str = "class") -> int:
        """A picked choice, a typed id ("207") or a typed name ("golden retriever") -> the class id."""
        text = str(entry).strip()
        if text.lower() in self._by_text:
            return self._by_text[text.lower()]
        head = text.split(":", 1)[0].strip()
        if head.lstrip("-").isdigit():
            index = int(head)
            if not 0 <= index < len(self):
                raise UserError(f"{field}: class id {index} is out of range; this model has classes "
                                f"0..{len(self) - 1}")
            return index
        raise UserError(f"{field}: no class named {text!r}; pick one from the list (type to search)")

    def parse_many(self, entries: Union[str, Iterable[Union[str, int]], None], field: str = "classes") -> List[int]:
        """The picker's entries, or ids separated by spaces or commas -> class ids, in the given order."""
        if isinstance(entries, str):
            entries = entries.replace(",", " ").split()
        entries = [entry for entry in (entries or []) if str(entry).strip()]
        if not entries:
            raise UserError(f"{field} is empty: pick at least one class")
        return [self.parse(entry, field) for entry in entries]
