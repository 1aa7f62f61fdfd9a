"""Virtual hosts, location matching and path rewrites: pure lookups built at config load."""
