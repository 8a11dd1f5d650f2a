# Conveniences over scripts/; the scripts are what CI and the README use.
.PHONY: build install test bench

build:
	scripts/build.sh

install:
	scripts/setup.sh

test:
	scripts/test.sh

bench:
	bench/pull.sh
