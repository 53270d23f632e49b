"""Robustness profiles: which transformations the attack optimises through, and after which it is judged.

A `Profile` says what the attack's loss looks at besides the photo itself, and which real (Pillow)
operations its result is judged after (its checkpoints):

- `jpeg_chain`: JPEG re-encodings one after the other, every prefix a view at every step (what
  `attack_batch(robust_jpeg=...)` has always done);
- `eot` (expectation over transformations, Athalye et al. 2018): chains of operations
  (`hasmap_jax.transforms.chain`) scored at every step (`always`) or drawn at random, one per group
  and step (`groups`), from a seeded key inside the compiled step;
- `checkpoints`: chains applied with Pillow to the returned photo, each then scored
  (`AttackResult.scores_after_checkpoints`).

Shipped profiles (`PROFILES`):

  off     the plain loss (the paper's)
  jpeg90  the photo and its JPEG-90 round trip (the MediaEval 2020 protocol); `robust_jpeg=90`
  web     the photo, one JPEG at quality 60-95, one downscaling to 50-87.5 % (then JPEG) and one
          of light blur (sigma 0.5-1.5), a small crop (90-95 %) or a flip, drawn anew at every step;
          judged after JPEG 90, 75 and 50, resize 0.75 then JPEG 75, resize 0.5 then JPEG 85,
          blur 1, crop 0.9 and flip
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.transforms.chain import Chain, Op, chain_name, parse_chain, parse_chains

Array = jax.Array

#: A list of chains at most this long is scored whole at every step; a longer one is drawn from.
MAX_ALWAYS = 3


@dataclasses.dataclass(frozen=True)
class EOT:
    """The transformed views the loss scores (hashable: a static part of the compiled step).

    Attributes:
      prefix: a chain applied first, once (e.g. the JPEG the photo is saved as); when non-empty its
        result is itself a view, and every other chain starts from it.
      always: chains scored at every step.
      groups: per group, one chain drawn at every step (uniformly, `draw`).
      seed: the draws' seed.
    """

    prefix: Chain = ()
    always: tuple[Chain, ...] = ()
    groups: tuple[tuple[Chain, ...], ...] = ()
    seed: int = 0

    def __post_init__(self):
        for chain in (self.prefix, *self.always, *(c for g in self.groups for c in g)):
            for op in chain:
                if not op.differentiable:
                    raise ValueError(f"{op.name}: no differentiable version, so the attack cannot optimise through it")
        if any(not g for g in self.groups):
            raise ValueError("EOT: an empty group")

    @property
    def group_offsets(self) -> np.ndarray:
        """Where each group's chains start in the groups' chains laid end to end."""
        return np.cumsum([0, *(len(g) for g in self.groups[:-1])]).astype(np.int32)

    @property
    def drawable(self) -> int:
        """How many chains the groups hold in all."""
        return sum(len(g) for g in self.groups)

    @property
    def views_per_step(self) -> int:
        """Transformed views scored at each step (besides the photo itself)."""
        return bool(self.prefix) + len(self.always) + len(self.groups)

    def draw(self, step: Array) -> Array:
        """(len(groups),) int32: the chain of each group scored at `step` (traced), from `seed`."""
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        return jnp.stack(
            [jax.random.randint(jax.random.fold_in(key, g), (), 0, len(c)) for g, c in enumerate(self.groups)]
        ).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Profile:
    """What the attack is robust to (its loss) and what it is judged after (module docstring).

    Attributes:
      name: a label ("web", "jpeg90", "jpeg85+jpeg90", or the chains' names).
      jpeg_chain: JPEG qualities re-encoded one after the other, every prefix a view (robust_jpeg).
      eot: the other transformed views, or None.
      checkpoints: chains the result is judged after, with Pillow.
    """

    name: str
    jpeg_chain: tuple[int, ...] = ()
    eot: EOT | None = None
    checkpoints: tuple[Chain, ...] = ()

    def __post_init__(self):
        if self.jpeg_chain and self.eot is not None:
            raise ValueError("a profile has a JPEG chain or EOT views, not both")

    @property
    def checkpoint_names(self) -> tuple[str, ...]:
        return tuple(chain_name(c) for c in self.checkpoints)

    def saved_as(self, chain: str | Chain) -> Profile:
        """This profile for a photo saved as `chain` (e.g. "jpeg85" for JPEG output) before anything
        else happens to it: the saved photo is one more view and the first checkpoint, and every
        view and checkpoint starts from it.

        For a JPEG chain that is the longer chain: `PROFILES["jpeg90"].saved_as("jpeg85")` is
        `robust_jpeg=(85, 90)`.
        """
        chain = parse_chain(chain)
        if not chain:
            return self
        if self.eot is None and all(op.kind == "jpeg" for op in chain):
            return jpeg_profile(tuple(op.value for op in chain) + self.jpeg_chain)
        if self.jpeg_chain:
            eot = EOT(prefix=chain, always=(tuple(Op("jpeg", q) for q in self.jpeg_chain),))
        elif self.eot is not None:
            eot = dataclasses.replace(self.eot, prefix=chain + self.eot.prefix)
        else:
            eot = EOT(prefix=chain)
        checkpoints = (chain, *(chain + c for c in self.checkpoints if c))
        return Profile(f"{chain_name(chain)}, then {self.name}", eot=eot, checkpoints=checkpoints)


def jpeg_profile(chain: tuple[int, ...]) -> Profile:
    """The profile of `robust_jpeg=chain`: every prefix a view, and a checkpoint."""
    checkpoints = tuple(tuple(Op("jpeg", q) for q in chain[: k + 1]) for k in range(len(chain)))
    return Profile(chain_name(checkpoints[-1]), jpeg_chain=tuple(chain), checkpoints=checkpoints)


#: The shipped profiles (module docstring). "off" is None: the plain loss.
PROFILES: dict[str, Profile | None] = {
    "off": None,
    "jpeg90": jpeg_profile((90,)),
    "web": Profile(
        "web",
        eot=EOT(
            groups=(
                parse_chains("jpeg60,jpeg70,jpeg80,jpeg90,jpeg95"),
                parse_chains("resize0.5+jpeg85,resize0.625+jpeg75,resize0.75+jpeg90,resize0.875+jpeg70"),
                parse_chains("blur0.5+jpeg90,blur1+jpeg80,blur1.5,crop0.9+jpeg85,crop0.95,flip+jpeg75"),
            )
        ),
        checkpoints=parse_chains("jpeg90,jpeg75,jpeg50,resize0.75+jpeg75,resize0.5+jpeg85,blur1,crop0.9,flip"),
    ),
}


def describe(profile: Profile | None) -> str:
    """One line of what a profile scores and what it is judged after, from its own tables (for
    help texts: the numbers are never written twice)."""
    if profile is None:
        return "the photo alone (the paper's plain loss)"
    parts = []
    if profile.jpeg_chain:
        parts.append("the photo and its JPEG round trips " + "+".join(f"jpeg{q}" for q in profile.jpeg_chain))
    if profile.eot is not None:
        eot = profile.eot
        if eot.prefix:
            parts.append(f"saved as {chain_name(eot.prefix)} first")
        if eot.always:
            parts.append("every step " + ", ".join(chain_name(c) for c in eot.always))
        for g in eot.groups:
            parts.append("each step one of " + ", ".join(chain_name(c) for c in g))
    parts.append("judged after " + ", ".join(profile.checkpoint_names))
    return "; ".join(parts)


def jpeg_qualities(value, *, what: str = "robust_jpeg") -> tuple[int, ...]:
    """A JPEG quality or a sequence of them as a tuple (empty for None); checks the values."""
    if value is None:
        return ()
    chain = (value,) if np.ndim(value) == 0 else tuple(value)
    if not chain or any(
        isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= 100 for q in chain
    ):
        raise ValueError(f"{what}: a JPEG quality in 1..100 or a sequence of them, got {value!r}")
    return tuple(int(q) for q in chain)


def resolve_profile(robust=None, robust_jpeg=None) -> Profile | None:
    """The profile `attack_batch(robust=..., robust_jpeg=...)` asks for (None: the plain loss).

    Args:
      robust: None or "off"; a name in `PROFILES`; a `Profile`; or chains to be robust to: a name
        ("resize0.75+jpeg75"), a comma-separated list of names, or a sequence of names / chains.
        Up to `MAX_ALWAYS` chains are all scored at every step, more are split into `MAX_ALWAYS`
        groups and one of each drawn per step; each is also a checkpoint. A single JPEG ("jpeg75")
        is `robust_jpeg=75`.
      robust_jpeg: the older spelling of JPEG robustness: a quality or a sequence of qualities
        re-encoded one after the other (`jpeg_profile`).

    Another seed for the draws: `dataclasses.replace(profile, eot=dataclasses.replace(profile.eot, seed=s))`.
    """
    chain = jpeg_qualities(robust_jpeg)
    if robust is None or (isinstance(robust, str) and robust.strip().lower() == "off"):
        if robust is not None and chain:
            raise ValueError("robust='off' contradicts robust_jpeg; give one of them")
        return jpeg_profile(chain) if chain else None
    if chain:
        raise ValueError("give robust or robust_jpeg, not both (robust_jpeg=Q is robust='jpegQ')")
    if isinstance(robust, Profile):
        profile = robust
    elif isinstance(robust, str) and robust.strip().lower() in PROFILES:
        profile = PROFILES[robust.strip().lower()]
    else:
        try:
            chains = parse_chains(robust)
        except (TypeError, ValueError) as e:
            raise ValueError(f"robust: expected one of {sorted(PROFILES)}, or operations ({e})") from None
        if len(chains) == 1 and len(chains[0]) == 1 and chains[0][0].kind == "jpeg":
            return jpeg_profile((chains[0][0].value,))
        name = ",".join(chain_name(c) for c in chains)
        if len(chains) <= MAX_ALWAYS:
            eot = EOT(always=chains)
        else:
            eot = EOT(groups=tuple(chains[g::MAX_ALWAYS] for g in range(MAX_ALWAYS)))
        profile = Profile(name, eot=eot, checkpoints=chains)
    return profile
