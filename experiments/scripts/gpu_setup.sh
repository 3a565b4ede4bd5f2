# Shared by the GPU session scripts (source it): the pinned pure-Python wheels the device
# image lacks or has in other versions (it has jax 0.11.2 and torch 2.11 with CUDA), and the data.
#   gpu_prepare            here, before the device call: wheels into .whl/, CIFAR-10 into .gpu/ (both git-ignored)
#   gpu_install            there, first thing: install .whl/ into /tmp/site, put CIFAR-10 where record.json says
GPU_WHEELS="flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 chex==0.1.92 ml_collections==1.1.0 torchattacks==3.5.1"

gpu_prepare() {
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
  mkdir -p .whl .gpu
  for p in $GPU_WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$p" || return 1
  done
  cp ../shared/data/cifar10.tar.gz .gpu/
}

gpu_install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site:$PWD
  if [ -f .gpu/cifar10.tar.gz ]; then mkdir -p ../shared/data && cp .gpu/cifar10.tar.gz ../shared/data/; fi
}
