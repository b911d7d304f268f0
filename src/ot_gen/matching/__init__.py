"""Matchers: pair generated points with real points. One module per family."""

from ot_gen.matching.assignment import ExactMatcher, HungarianMatcher
from ot_gen.matching.base import Matcher, Matching, identity_pairs

__all__ = ["ExactMatcher", "HungarianMatcher", "Matcher", "Matching", "identity_pairs"]
