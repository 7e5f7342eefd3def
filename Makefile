# The two commands of the README, plus a quick loop for development.
.PHONY: run test test-unit bench console-screenshots

run:        ## install what is missing and run the whole system (broker included) on its defaults
	./scripts/run.sh

test:       ## install what is missing and run the whole test suite (starts and stops its own broker and PostgreSQL)
	./scripts/test.sh

test-unit:  ## lint, types and unit tests only: seconds, no servers
	./scripts/test.sh unit

bench:      ## run the benchmarks (own broker) and print their figures; see bench/README.md
	./scripts/bench.sh

console-screenshots:  ## PNGs of the Servicedesk console during an outage and after it (needs the broker of `make run`)
	.venv/bin/python -m scripts.console_screenshots
