"""The synthetic set the precision check trains on (PrototypeCodes) and its loss levels: the floor no model
goes below, the class code-frequency plateau, and the halfway line a run must cross to have learned the set."""
import math
from typing import Optional

import numpy as np
import torch


class PrototypeCodes(torch.utils.data.Dataset):
    """Sample i: class i mod num_classes's prototype, shifted cyclically by a random (rows, columns) if
    `shift`, then with each position redrawn uniformly from the vocabulary with probability
    resample_fraction; a function of (seed, i) only. Items: ((grid**2,) long codes, class).

    A prototype is a grid x grid arrangement of regions x regions square blocks, each block one code,
    all distinct within the class (regions = grid: every position its own code). The shift matches what
    a model without absolute positions can generate: ARPG's 2-D RoPE is relative, so nothing tells it
    where the first token it places sits; the others follow that token's shift. Blocks of several
    positions make the set learnable in a few hundred steps by a model with relative positions only: a
    target's nearest known tokens mostly hold its code. With one code per position (regions = grid) the
    code must be looked up from a neighbour's code and offset, which ARPG-L and ARPG-tiny did not learn
    within the check's step counts (they stay at plateau_loss), while blocks of 4 x 4 do."""

    def __init__(self, num_classes: int, grid: int, vocab_size: int, resample_fraction: float, num_samples: int,
                 seed: int, shift: bool = True, regions: Optional[int] = None):
        regions = regions or grid
        if grid % regions:
            raise ValueError(f"--regions {regions} does not divide --grid {grid}")
        if vocab_size < regions * regions:
            raise ValueError(f"--vocab-size {vocab_size} is smaller than the {regions * regions} distinct codes of "
                             "a prototype")
        generator = torch.Generator().manual_seed(seed)
        block = grid // regions
        self.prototypes = torch.stack([  # (K, N)
            torch.randperm(vocab_size, generator=generator)[:regions * regions].view(regions, regions)
            .repeat_interleave(block, 0).repeat_interleave(block, 1).flatten() for _ in range(num_classes)])
        self.grid, self.vocab_size, self.resample_fraction = grid, vocab_size, resample_fraction
        self.num_samples, self.seed, self.shift = num_samples, seed, shift

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        label = index % len(self.prototypes)
        shift = tuple(int(value) for value in rng.integers(0, self.grid, 2)) if self.shift else (0, 0)
        codes = self.prototypes[label].view(self.grid, self.grid).roll(shift, dims=(0, 1)).flatten()
        redraw = torch.from_numpy(rng.random(codes.numel()) < self.resample_fraction)
        codes[redraw] = torch.from_numpy(rng.integers(0, self.vocab_size, int(redraw.sum())))
        return codes, label

    def held_out(self, count: int):
        """(count, N) codes and (count,) labels of samples after the training set's."""
        items = [self[self.num_samples + i] for i in range(count)]
        return torch.stack([codes for codes, _ in items]), torch.tensor([label for _, label in items])

    def agreement(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) share of positions where each (B, N) sample equals its class's prototype (at the cyclic
        shift that agrees best, when samples are shifted)."""
        samples = tokens.cpu().view(-1, self.grid, self.grid)
        prototypes = self.prototypes[labels.cpu()].view(-1, self.grid, self.grid)
        offsets = range(self.grid) if self.shift else [0]
        shifts = [(rows, columns) for rows in offsets for columns in offsets]
        return torch.stack([(samples == prototypes.roll(shift, dims=(1, 2))).float().mean((1, 2))
                            for shift in shifts]).amax(0)

    def match_share(self, tokens: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of the samples whose agreement is at least half of what a perfect sample keeps
        (1 - resample_fraction); a random grid agrees on about 1/V of its positions."""
        return (self.agreement(tokens, labels) >= (1 - self.resample_fraction) / 2).float().mean().item()


def loss_floor(vocab_size: int, resample_fraction: float) -> float:
    """The entropy (nats) of one token given its class and the shift: no model's loss goes lower."""
    keep = 1 - resample_fraction + resample_fraction / vocab_size
    other = resample_fraction / vocab_size
    return -(keep * math.log(keep) + (vocab_size - 1) * other * math.log(other))


def plateau_loss(vocab_size: int, codes_per_class: int, resample_fraction: float) -> float:
    """The entropy (nats) of one token given its class alone: the loss of a model that has learned only how
    often each code occurs in its class. Training sits here before it learns the grids, for a number of
    steps that varies from seed to seed."""
    own = (1 - resample_fraction) / codes_per_class + resample_fraction / vocab_size
    other = resample_fraction / vocab_size
    return -(codes_per_class * own * math.log(own) + (vocab_size - codes_per_class) * other * math.log(other))


def learned_below(args) -> float:
    """A run has learned the set when its held-out loss is below halfway from the plateau to the floor."""
    regions = args.regions or args.grid
    plateau = plateau_loss(args.vocab_size, regions * regions, args.resample_fraction)
    return (plateau + loss_floor(args.vocab_size, args.resample_fraction)) / 2


def held_out_batch(dataset: PrototypeCodes, count: int, seed: int, device):
    """Held-out codes, labels and fixed generation orders (B, N) for teacher forcing."""
    codes, labels = dataset.held_out(count)
    orders = torch.rand(codes.shape, generator=torch.Generator().manual_seed(seed)).argsort(1)
    return codes.to(device), labels.to(device), orders.to(device)
