# One build for everything (DESIGN §2).
#   make              libcommon + every tool (and cuda/ when nvcc and cuDNN's headers are found)
#   make check        unit tests, tool tests, parity tests; ends with "N passed, N failed"
#   make check-asan   the same tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz         build the libFuzzer targets (clang); FUZZ_SECONDS=600 make fuzz-run runs them
#   make bench        benchmarks against the peers, printed as figures and ratios
#   make check-cuda, make bench-cuda   the same on a GPU machine (tests/cuda/device-check.sh runs both)
#   make demo         the Fashion-MNIST example (examples/fashion-mnist)
#   make install PREFIX=/usr/local DESTDIR=    binaries and man pages
#   make CUDA=0       never build the CUDA backend
VERSION   := 0.1.0
BUILD     ?= build
PREFIX    ?= /usr/local
CC        ?= cc
PKGS      := libzstd libxxhash jansson libpng libjpeg libarchive zlib expat openblas
OPT       ?= -O2
CFLAGS    ?= $(OPT) -g
SAN       ?=
CPPFLAGS  += -Ilibcommon -DMOCO_VERSION='"$(VERSION)"' $(shell pkg-config --cflags $(PKGS))
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wno-format-truncation -pthread -fopenmp $(SAN) $(CFLAGS)
LDLIBS    += $(shell pkg-config --libs $(PKGS)) -ldnnl -llbfgs -lm -pthread -fopenmp

# MPI (dist.c, linked into moco-pretrain): when an MPI's pkg-config file is found; without it a
# process started by mpirun is told the build has no MPI.
MPI_PC    := $(firstword $(foreach p,mpi-c ompi-c mpich,$(shell pkg-config --exists $(p) 2>/dev/null && echo $(p))))
ifneq ($(MPI_PC),)
  MPI_CFLAGS := -DMOCO_HAVE_MPI $(shell pkg-config --cflags $(MPI_PC))
  MPI_LIBS   := $(shell pkg-config --libs $(MPI_PC))
endif

# CUDA: built when nvcc, cuDNN and NCCL (headers and libraries) are found, unless CUDA=0.
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(shell command -v nvcc 2>/dev/null || { test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc; })
CUDNN_H   := $(firstword $(wildcard $(CUDA_HOME)/include/cudnn.h /usr/include/cudnn.h /usr/include/*/cudnn.h))
CUDNN_SO  := $(firstword $(wildcard $(CUDA_HOME)/lib64/libcudnn.so /usr/lib/*/libcudnn.so /usr/lib64/libcudnn.so))
NCCL_H    := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
NCCL_SO   := $(firstword $(wildcard $(CUDA_HOME)/lib64/libnccl.so /usr/lib/*/libnccl.so /usr/lib64/libnccl.so))
ifeq ($(CUDA),0)
  HAVE_CUDA := 0
else ifneq ($(and $(NVCC),$(CUDNN_H),$(CUDNN_SO),$(NCCL_H),$(NCCL_SO)),)
  HAVE_CUDA := 1
else
  HAVE_CUDA := 0
endif
NVCCFLAGS ?= -O2 -gencode arch=compute_90,code=sm_90 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden
CUDA_LIB  := $(BUILD)/libmoco_cuda.a
CUDA_SO   := $(BUILD)/lib/libmoco_cuda.so
# cudart linked statically (the GPU machine's runtime may differ); cuDNN and cuBLAS from the system
CUDA_LIBS := -L$(CUDA_HOME)/lib64 $(addprefix -L,$(sort $(dir $(CUDNN_SO) $(NCCL_SO)))) -lcudnn -lcublas -lnccl -lcudart_static \
             -ldl -lrt -lstdc++

LIB_SRC   := $(wildcard libcommon/*.c)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB       := $(BUILD)/libcommon.a
TOOL_SRC  := $(wildcard tools/*.c)
TOOLS     := $(TOOL_SRC:tools/%.c=$(BUILD)/bin/%)
TEST_SRC  := $(wildcard tests/unit/test_*.c)
TESTS     := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HELPER_SRC:= $(wildcard tests/helpers/*.c)
HELPERS   := $(HELPER_SRC:tests/helpers/%.c=$(BUILD)/helpers/%)
BENCH_SRC := $(wildcard tests/bench/*.c)
BENCHES   := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)
CUDA_SRC  := $(wildcard cuda/*.cu)
CUDA_OBJ  := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CUDA_CHECK_SRC := $(wildcard tests/cuda/check_*.c)
CUDA_CHECKS    := $(CUDA_CHECK_SRC:tests/cuda/%.c=$(BUILD)/cuda-tests/%)
MAN_PAGES := $(wildcard man/man*/*.[1-8])

.PHONY: all check check-asan check-cuda bench bench-cuda demo install clean fuzz fuzz-run cuda-notice
# Keep object files of pattern chains (tests, helpers): no rebuild on the next make.
.SECONDARY:
all: $(TOOLS) $(TESTS) $(HELPERS) $(BENCHES) cuda-notice

ifeq ($(HAVE_CUDA),1)
# the PyTorch peers copied beside the build: a GPU machine gets the checkout and build/, not ../shared
PEER_COPIES := $(patsubst ../shared/peers/%,$(BUILD)/peers/%,$(wildcard ../shared/peers/*.py))
PHOTOS_500  := $(if $(wildcard ../shared/data/photos),$(BUILD)/photos500/.made)
all: $(CUDA_LIB) $(CUDA_SO) $(CUDA_CHECKS) $(PEER_COPIES) $(PHOTOS_500)
$(BUILD)/peers/%.py: ../shared/peers/%.py
	@mkdir -p $(dir $@) && cp $< $@
# and the end-to-end benchmark's JPEGs (tests/cuda/device-check.sh)
$(BUILD)/photos500/.made: tests/bench/make-photos.sh
	@sh tests/bench/make-photos.sh ../shared/data/photos $(dir $@) && touch $@
cuda-notice: ;
else
cuda-notice:
	@echo "note: CUDA backend not built ($(if $(filter 0,$(CUDA)),CUDA=0,nvcc or cuDNN or NCCL not found)); CPU only"
endif

$(BUILD)/%.o: %.c $(wildcard libcommon/*.h) | $(BUILD)/libcommon $(BUILD)/tools $(BUILD)/tests/unit $(BUILD)/tests/bench $(BUILD)/tests/helpers
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

# The resampler is the hot loop of moco-shard and moco-augment: -O3 vectorises it further.
$(BUILD)/libcommon/resample.o: OPT = -O3

$(BUILD)/libcommon/dist.o: CPPFLAGS += $(MPI_CFLAGS)
$(BUILD)/bin/moco-pretrain: LDLIBS += $(MPI_LIBS)
# --device cuda: the tools load build/lib/libmoco_cuda.so at run time (gpu_api.h), so nothing of
# CUDA is mapped into a CPU run; the library resolves libcommon's symbols in the tool that loads it.
LDLIBS += -ldl -rdynamic

$(LIB): $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/%: $(BUILD)/tools/%.o $(LIB) | $(BUILD)/bin
	$(CC) $(ALL_CFLAGS) $< $(LIB) $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB)
	$(CC) $(ALL_CFLAGS) $< $(LIB) $(LDLIBS) -o $@

$(BUILD)/helpers/%: $(BUILD)/tests/helpers/%.o $(LIB) | $(BUILD)/helpers
	$(CC) $(ALL_CFLAGS) $< $(LIB) $(LDLIBS) -o $@

$(BUILD)/bench/%: $(BUILD)/tests/bench/%.o $(LIB) | $(BUILD)/bench
	$(CC) $(ALL_CFLAGS) $< $(LIB) $(LDLIBS) -o $@

$(BUILD)/cuda/%.o: cuda/%.cu $(wildcard cuda/*.h libcommon/*.h) | $(BUILD)/cuda
	$(NVCC) $(NVCCFLAGS) -Ilibcommon -Icuda -c $< -o $@

# The same checks on the CPU, in make check: cuda/'s sources with their kernel launches rewritten
# (tests/cuda/emu/rewrite.py), compiled as C++ against an emulation of CUDA, cuDNN, cuBLAS and NCCL
# (tests/cuda/emu/emu.h), so every change to cuda/ runs without a GPU. Not under the sanitizers
# (the emulation's fibers switch stacks).
EMU_DIR    := $(BUILD)/cuda-emu
EMU_GEN    := $(patsubst cuda/%.cu,$(EMU_DIR)/%.cpp,$(CUDA_SRC)) $(patsubst cuda/%,$(EMU_DIR)/%,$(wildcard cuda/*.h))
EMU_OBJ    := $(patsubst cuda/%.cu,$(EMU_DIR)/%.o,$(CUDA_SRC)) $(EMU_DIR)/emu.o
EMU_CHECKS := $(CUDA_CHECK_SRC:tests/cuda/%.c=$(EMU_DIR)/%)
EMU_CXX    := g++ -std=c++17 -O1 -g -w -include tests/cuda/emu/emu.h -Itests/cuda/emu -Itests/cuda/emu/include -I$(EMU_DIR) \
              -Ilibcommon
ifeq ($(SAN),)
all: $(EMU_CHECKS)
endif
$(EMU_DIR)/%.cpp: cuda/%.cu tests/cuda/emu/rewrite.py
	@mkdir -p $(EMU_DIR) && python3 tests/cuda/emu/rewrite.py $< $@
$(EMU_DIR)/%.h: cuda/%.h tests/cuda/emu/rewrite.py
	@mkdir -p $(EMU_DIR) && python3 tests/cuda/emu/rewrite.py $< $@
$(EMU_DIR)/%.o: $(EMU_DIR)/%.cpp $(EMU_GEN) tests/cuda/emu/emu.h $(wildcard libcommon/*.h)
	$(EMU_CXX) -c $< -o $@
$(EMU_DIR)/emu.o: tests/cuda/emu/emu.cpp tests/cuda/emu/emu.h
	@mkdir -p $(EMU_DIR) && $(EMU_CXX) -c $< -o $@
$(EMU_DIR)/check_%: tests/cuda/check_%.c tests/cuda/check.h $(EMU_OBJ) $(LIB) $(EMU_GEN)
	$(CC) $(CPPFLAGS) -I$(EMU_DIR) -Itests/unit $(ALL_CFLAGS) -c $< -o $@.o
	g++ $@.o $(EMU_OBJ) $(LIB) $(LDLIBS) -lstdc++ -o $@

# The emulated backend as the tools load it (tests/tools/t0620-cuda-emulated.sh runs copies of the
# tools beside it): the same sources, position-independent, in a library of its own.
EMU_SO_DIR := $(EMU_DIR)/pic
EMU_SO_OBJ := $(patsubst cuda/%.cu,$(EMU_SO_DIR)/%.o,$(CUDA_SRC)) $(EMU_SO_DIR)/emu.o
EMU_SO     := $(EMU_DIR)/lib/libmoco_cuda.so
$(EMU_SO_DIR)/%.o: $(EMU_DIR)/%.cpp $(EMU_GEN) tests/cuda/emu/emu.h $(wildcard libcommon/*.h)
	@mkdir -p $(EMU_SO_DIR) && $(EMU_CXX) -fPIC -c $< -o $@
$(EMU_SO_DIR)/emu.o: tests/cuda/emu/emu.cpp tests/cuda/emu/emu.h
	@mkdir -p $(EMU_SO_DIR) && $(EMU_CXX) -fPIC -c $< -o $@
$(EMU_SO): $(EMU_SO_OBJ)
	@mkdir -p $(dir $@) && g++ -shared -o $@ $(EMU_SO_OBJ)
ifeq ($(SAN),)
all: $(EMU_SO)
endif

# The GPU op checks: built wherever CUDA is (CI compiles them), run by make check-cuda on a GPU.
$(BUILD)/cuda-tests/%: tests/cuda/%.c tests/cuda/check.h $(LIB) $(CUDA_LIB) | $(BUILD)/cuda-tests
	$(CC) $(CPPFLAGS) -Icuda -Itests/unit $(ALL_CFLAGS) $< $(CUDA_LIB) $(LIB) $(LDLIBS) $(CUDA_LIBS) -o $@

# what the tools dlopen: the backend with cuDNN, cuBLAS, NCCL and (static) cudart behind it
$(CUDA_SO): $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) -shared -cudart static -o $@ $(CUDA_OBJ) $(CUDA_LIBS)

$(CUDA_LIB): $(CUDA_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/libcommon $(BUILD)/tools $(BUILD)/tests/unit $(BUILD)/tests/bench $(BUILD)/tests/helpers $(BUILD)/bin $(BUILD)/helpers $(BUILD)/bench $(BUILD)/cuda $(BUILD)/cuda-tests:
	mkdir -p $@

check: all
	@sh tests/run.sh $(BUILD)

# The CUDA backend against the CPU one, op by op (a GPU machine: see ../shared/DEVICE.md and
# tests/cuda/device-check.sh); ends with "N passed, N failed" like make check.
check-cuda: all
	@test "$(HAVE_CUDA)" = 1 || { echo "check-cuda: the CUDA backend is not built (nvcc or cuDNN or NCCL missing)"; exit 1; }
	@sh tests/run.sh $(BUILD) cuda

# The ResNet-50 step and the end-to-end pipe beside the PyTorch peer, on a GPU machine (logs in
# $(BUILD)/bench-cuda); tests/cuda/device-check.sh runs this after the checks.
bench-cuda: all
	@test "$(HAVE_CUDA)" = 1 || { echo "bench-cuda: the CUDA backend is not built (nvcc or cuDNN or NCCL missing)"; exit 1; }
	@PARTS="bench e2e" BUILD=$(BUILD) sh tests/cuda/device-check.sh $(BUILD)/bench-cuda

# Same sources, separate build folder, sanitizers on; any report aborts the test that caused it.
check-asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" CUDA=0 all
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 sh tests/run.sh build-asan

# libFuzzer targets (stream, safetensors, image decoding), built with clang; OpenMP pragmas are
# ignored there, so libcommon calls omp_* functions only under #ifdef _OPENMP.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZERS  := $(FUZZ_SRC:tests/fuzz/%.c=build-fuzz/%)
FUZZ_SECONDS ?= 60
fuzz: $(FUZZERS)
build-fuzz/%: tests/fuzz/%.c $(LIB_SRC) $(wildcard libcommon/*.h)
	@mkdir -p build-fuzz
	clang -g -O1 -fsanitize=fuzzer,address,undefined $(CPPFLAGS) -std=c11 -D_GNU_SOURCE $< $(LIB_SRC) $(filter-out -fopenmp,$(LDLIBS)) -o $@
fuzz-run: fuzz
	@for f in $(FUZZERS); do n=$$(basename $$f); mkdir -p build-fuzz/corpus-$$n; \
	  cp tests/fuzz/seeds/$$n/* build-fuzz/corpus-$$n/ 2>/dev/null; \
	  echo "== $$n for $(FUZZ_SECONDS) s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 build-fuzz/corpus-$$n || exit 1; done

bench: all
	@sh tests/bench/run.sh $(BUILD)

# The demo installs what is missing (silent when nothing is), builds, then runs the example;
# EPOCHS=, THREADS= and DATA= on the command line reach the example's Makefile.
demo:
	@./scripts/install-deps.sh
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory -C examples/fashion-mnist BIN=$(CURDIR)/$(BUILD)/bin

install: $(TOOLS)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	if [ -f $(CUDA_SO) ]; then install -d $(DESTDIR)$(PREFIX)/lib && install -m 755 $(CUDA_SO) $(DESTDIR)$(PREFIX)/lib/; fi
	for m in $(MAN_PAGES); do install -m 644 $$m $(DESTDIR)$(PREFIX)/share/man/$$(basename $$(dirname $$m))/; done

clean:
	rm -rf build build-asan build-fuzz
