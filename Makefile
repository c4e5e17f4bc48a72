# Developer shortcuts.  The README's two commands are all a user needs.
PYTHON ?= python3
ASAN_RT := $(shell gcc -print-file-name=libasan.so)
UBSAN_RT := $(shell gcc -print-file-name=libubsan.so)
TESTS ?= tests
# -P (below) keeps the source tree's rgflow/ off sys.path so the sanitized build is imported.
ASAN_ENV := LD_PRELOAD="$(ASAN_RT) $(UBSAN_RT)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=$(CURDIR)/build/asan

.PHONY: inplace sanitize bench notebooks findings clean

# Build the extension next to the sources (PYTHONPATH=. then imports it).
inplace:
	RGFLOW_WERROR=1 $(PYTHON) setup.py build_ext --inplace

# AddressSanitizer + UndefinedBehaviorSanitizer build in build/asan, then the tests under it.
# CPython is not instrumented, so the ASan runtime is preloaded; leak detection is off because
# the interpreter keeps allocations alive at exit.  `make sanitize TESTS=tests/test_chains.py`
# runs a subset.
sanitize:
	rm -rf build/asan && mkdir -p build/asan && cp -r rgflow build/asan/
	rm -f build/asan/rgflow/*.so
	RGFLOW_SANITIZE=1 RGFLOW_WERROR=1 $(PYTHON) setup.py build_ext --force \
	    --build-lib build/asan --build-temp build/asan-tmp
	$(ASAN_ENV) $(PYTHON) -P -c "import rgflow; assert 'build/asan' in rgflow.__file__"
	$(ASAN_ENV) $(PYTHON) -P -m pytest -p no:cacheprovider -q $(TESTS)

# Re-execute the notebooks at their default sizes and save them with their outputs (after any
# change that moves their numbers); `make notebooks NOTEBOOKS=01_quickstart.ipynb` for one.
notebooks: inplace
	cd notebooks && PYTHONPATH=$(CURDIR) $(PYTHON) execute.py $(NOTEBOOKS)

# The README's findings tables and docs/findings-*.md, from the gated sweeps' stored records.
findings:
	PYTHONPATH=$(CURDIR) $(PYTHON) notebooks/findings_docs.py

bench:
	for b in benchmarks/bench_*.py; do PYTHONPATH=. $(PYTHON) $$b || exit 1; done

clean:
	rm -rf build rgflow/*.so *.egg-info
