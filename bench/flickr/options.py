"""Option names of the Flickr trajectory evaluation, kept apart from the rest of bench.flickr
so that the CLI can offer them without importing numpy and scipy at start-up."""

# ours: our query features; authors: the CIKM'16 PoiRank set; both: side by side;
# cv: ours, both, the PoiRank replica or the PoiRank learner on both sets, chosen per half on the other half; ours+poirank: ours,
# plus POIRANK as a third ensemble member on the authors' features; nested: like cv, but chosen
# for each held-out query by 5-fold F1 over ALL other queries; poirank: the PoiRank replica alone
FEATURE_SETS = ("ours", "authors", "both", "cv", "ours+poirank", "nested", "poirank")
