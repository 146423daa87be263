"""fleet."""

# The kinds of community an instance serves (fleet.toml, provisioning, the registry CHECK).
COMMUNITY_TYPES = ("municipality", "intercommunality", "university", "association", "region")
