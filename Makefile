.PHONY: static bench

# Static musl release binary: build, then check linkage, size (<= 2.5 MB) and an empty-root run.
static:
	./scripts/static.sh

# Performance table against an echo floor; REFERENCE_BIN=path adds a second server.
# Not part of `make test`.
bench:
	cargo bench --bench perf
