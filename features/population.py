"""The hidden population: who people are (home, age, income, tastes, consent, which parties
know them). Drawn chunk by chunk; person `i` is the same whatever the chunking, given the
chunk's own random stream."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wenlv.features.contracts import AGE_BANDS, POI_CATEGORIES
from wenlv.features.world import DISTRICTS

AGE_P = np.array([0.12, 0.25, 0.22, 0.18, 0.13, 0.10])
# How each age band shifts taste logits (POI_CATEGORIES order): the young go out, the old go to museums.
AGE_TASTE = np.array([
    [0.0, -0.3, 0.0, 0.8, 0.0, 0.2, 1.2],
    [0.0, -0.1, 0.1, 0.5, 0.0, 0.3, 0.8],
    [0.1, 0.1, 0.1, 0.6, 0.1, 0.2, 0.1],
    [0.3, 0.3, 0.3, -0.2, 0.1, 0.1, -0.4],
    [0.5, 0.5, 0.4, -0.6, 0.1, 0.0, -1.0],
    [0.6, 0.6, 0.5, -1.0, 0.0, 0.0, -1.5],
])
# Baseline taste logits (POI_CATEGORIES order): sights and food draw most, theme parks few.
CATEGORY_PRIOR = np.array([1.0, 0.0, 0.4, -0.9, 0.0, 0.8, -0.4])
# Chinese mobile number prefixes (1xx) that numbers are drawn from.
MOBILE_PREFIXES = np.array(list(range(130, 140)) + [150, 151, 152, 153, 155, 156, 157, 158, 159, 166, 173, 175, 176,
                                                    177, 178] + list(range(180, 190)) + [198, 199], dtype=np.int64)
_ID_PRIME = 999_999_937  # ids are an affine bijection of the person index modulo this prime


@dataclass(frozen=True)
class IdScheme:
    """Per-seed bijections from person index to phone, visitor_id and account_id, so ids are
    unique, look unrelated across parties, and do not depend on how people are chunked."""

    phone_a: int
    phone_b: int
    visitor_a: int
    visitor_b: int
    account_a: int
    account_b: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "IdScheme":
        space = len(MOBILE_PREFIXES) * 10**8
        while True:
            a = int(rng.integers(10**7, space - 1))
            if math.gcd(a, space) == 1:
                break
        ints = rng.integers(1, _ID_PRIME - 1, size=5)
        return cls(a, int(rng.integers(0, space)), int(ints[0]), int(ints[1]), int(ints[2]), int(ints[3]))

    def phones(self, idx: np.ndarray) -> np.ndarray:
        """E.164 digits as int64: 86 + 1xx + 8 digits (13 digits)."""
        space = len(MOBILE_PREFIXES) * 10**8
        j = (idx.astype(object) * self.phone_a + self.phone_b) % space  # object: no int64 overflow
        j = j.astype(np.int64)
        return 86 * 10**11 + MOBILE_PREFIXES[j // 10**8] * 10**8 + j % 10**8

    def visitor_ids(self, idx: np.ndarray) -> np.ndarray:
        return ((idx.astype(object) * self.visitor_a + self.visitor_b) % _ID_PRIME).astype(np.int64)

    def account_ids(self, idx: np.ndarray) -> np.ndarray:
        return ((idx.astype(object) * self.account_a + self.account_b) % _ID_PRIME).astype(np.int64)


@dataclass
class People:
    """One chunk of the hidden population (arrays of length n)."""

    index: np.ndarray  # global person index
    home: np.ndarray  # index into world.home_cities()
    distance_km: np.ndarray
    age: np.ndarray  # index into AGE_BANDS
    gender: np.ndarray  # 0 = F, 1 = M
    income: np.ndarray  # standard normal
    arpu_tier: np.ndarray
    taste: np.ndarray  # n × categories, rows sum to 1
    district_pref: np.ndarray  # n × districts, rows sum to 1
    activity: np.ndarray  # multiplies every rate
    onset_day: np.ndarray  # first day of interest in the destination (0 for most)
    responsiveness: np.ndarray  # how strongly a campaign moves this person
    consent_marketing: np.ndarray
    consent_partner_share: np.ndarray
    consent_ads: np.ndarray
    is_subscriber: np.ndarray
    has_account: np.ndarray
    noise_topics: np.ndarray  # n × 2 indices into NOISE_TOPICS

    @property
    def n(self) -> int:
        return len(self.index)


def distance_decay(distance_km: np.ndarray) -> np.ndarray:
    """Relative trip rate by home distance: ~1 for locals, ~0.3 from Shanghai, ~0.03 from Beijing."""
    return 1.0 / (1.0 + (np.asarray(distance_km) / 100.0) ** 1.5)


def draw_people(start: int, n: int, cities, days: int, n_noise_topics: int, rng: np.random.Generator) -> People:
    idx = np.arange(start, start + n, dtype=np.int64)
    home = rng.choice(len(cities), size=n, p=cities.p.to_numpy())
    city_km = cities.distance_km.to_numpy()[home]
    local = city_km < 1.0
    dist = np.where(local, np.clip(rng.lognormal(np.log(12.0), 0.5, n), 2.0, 60.0),
                    city_km * (1 + rng.normal(0, 0.04, n)) + np.abs(rng.normal(0, 12, n)))
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_P)
    gender = (rng.random(n) < 0.5).astype(np.int8)
    income = rng.normal(0, 1, n)
    arpu = np.clip(np.rint(3 + 1.1 * income + rng.normal(0, 0.6, n)), 1, 5).astype(np.int64)
    logits = rng.normal(0, 1.1, (n, len(POI_CATEGORIES))) + CATEGORY_PRIOR + AGE_TASTE[age]
    logits[:, POI_CATEGORIES.index("hotel")] += 0.4 * income  # the better-off value a good hotel
    taste = np.exp(logits)
    taste /= taste.sum(1, keepdims=True)
    dpref = rng.gamma(0.6, 1.0, (n, len(DISTRICTS))) + 0.02
    dpref /= dpref.sum(1, keepdims=True)
    activity = rng.lognormal(-0.3, 0.9, n)
    onset = np.where(rng.random(n) < 0.75, 0, rng.integers(0, days, n))
    privacy = rng.normal(0, 1, n)  # privacy-minded people decline consent everywhere more often
    consent_m = privacy + rng.normal(0, 0.7, n) < 1.05
    consent_p = privacy + rng.normal(0, 0.7, n) < 0.65
    consent_a = privacy + rng.normal(0, 0.7, n) < 0.50
    is_sub = rng.random(n) < 0.78
    young = age <= 2
    has_acc = rng.random(n) < np.where(young, 0.70, 0.48)
    noise = np.stack([rng.integers(0, n_noise_topics, n), rng.integers(0, n_noise_topics, n)], axis=1)
    return People(idx, home, dist, age, gender, income, arpu, taste, dpref, activity, onset,
                  rng.beta(2.0, 6.0, n), consent_m, consent_p, consent_a, is_sub, has_acc, noise)
