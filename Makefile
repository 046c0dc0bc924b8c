# Set-up lives here, never in shell history. Every target works on a fresh clone.
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip
STAMP    := $(VENV)/.installed
LCP_VER  := 0.3.36
SDIST    := .cache/llama_cpp_python-$(LCP_VER)
BUILD    := build
JOBS     ?= 2

.PHONY: install ops sdist test demo clean help

help:
	@echo "make demo    - install into .venv and run the demo on the embedded tiny checkpoint"
	@echo "make test    - install into .venv and run the whole suite"
	@echo "make install - create/refresh .venv with the project installed editable"

# llama-cpp-python builds from source (~5 min on 2 cores); pip caches the wheel, so this
# only rebuilds when the pin changes or on a machine that never built it.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel scikit-build-core
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The pinned llama.cpp source (ggml-backend-impl.h for the bridge, upstream's converter for
# side-by-side comparisons) comes from the same sdist the wheel was built from.
$(SDIST)/.ok: | $(STAMP)
	mkdir -p .cache
	$(PIP) download -q --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==$(LCP_VER) -d .cache
	tar xzf .cache/llama_cpp_python-$(LCP_VER).tar.gz -C .cache
	touch $@

sdist: $(SDIST)/.ok

# C (and, when nvcc exists, CUDA) KDA ops, built against llama-cpp-python's own ggml.
ops: $(STAMP) $(SDIST)/.ok
	cmake -S . -B $(BUILD) -DPython_EXECUTABLE=$(abspath $(PY)) -DKIMI_LLAMA_SRC=$(abspath $(SDIST))/vendor/llama.cpp -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

test: ops
	$(PY) -m pytest -q tests

demo: ops
	$(VENV)/bin/kimi-gguf demo

clean:
	rm -rf $(BUILD) out
