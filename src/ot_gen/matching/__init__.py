"""Matchers: pair generated points with real points. One module per family."""

from ot_gen.matching.assignment import ExactMatcher, RandomMatcher
from ot_gen.matching.base import Matcher, Matching, identity_pairs, match_by_class
from ot_gen.matching.entropic import SinkhornMatcher, round_to_assignment
from ot_gen.matching.nearest import NearestMatcher
from ot_gen.matching.potential import CriticMatcher, SemiDiscreteMatcher, balance_excess
from ot_gen.matching.unbalanced import PartialMatcher, UnbalancedMatcher

__all__ = [
    "CriticMatcher", "ExactMatcher", "Matcher", "Matching", "NearestMatcher", "PartialMatcher",
    "RandomMatcher", "SemiDiscreteMatcher", "SinkhornMatcher", "UnbalancedMatcher", "balance_excess",
    "identity_pairs", "match_by_class", "round_to_assignment",
]
