"""Which JSON Schema keywords hold what, for the passes that walk a schema before llguidance compiles it."""

DEFINITIONS = ("$defs", "definitions")
# maps of names to schemas: a property may be called "enum", "if" or "$ref"
NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "dependentSchemas", *DEFINITIONS})
# values that are data, not schemas (a `$ref` inside an example is no reference)
DATA = frozenset({"enum", "const", "examples", "default"})
