#!/usr/bin/env bash
# Install.PkgConfigAndFindPackage: install the build tree into a scratch
# prefix and use it the two ways a user would, with nothing else on the
# command line:
#   1. gcc x.c $(pkg-config --cflags --libs ukprobes)
#   2. find_package(ukprobes) + target_link_libraries(... ukprobes::ukprobes)
# Each program probes a function of its own and checks the probe was hit.
# The library directory is whatever GNUInstallDirs chose (lib, lib64 or
# lib/<multiarch>), so the script finds it rather than assuming one.
set -euo pipefail
build_dir=$(realpath "$1")
here=$(dirname "$(realpath "$0")")

scratch=$(mktemp -d "${TMPDIR:-/tmp}/ukp-install.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
prefix=$scratch/prefix

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; exit 1; }

step "cmake --install $build_dir --prefix $prefix"
cmake --install "$build_dir" --prefix "$prefix"

step "layout"
libdir=
for candidate in lib lib64 lib/x86_64-linux-gnu; do
    if [ -e "$prefix/$candidate/libukprobes.so" ]; then libdir=$prefix/$candidate; break; fi
done
[ -n "$libdir" ] || fail "no libukprobes.so under $prefix/{lib,lib64,lib/x86_64-linux-gnu}"
echo "library directory: ${libdir#"$prefix"/}"
for file in \
    "$libdir/libukprobes.so" "$libdir/libukprobes.so.0" \
    "$libdir/pkgconfig/ukprobes.pc" \
    "$libdir/cmake/ukprobes/ukprobesConfig.cmake" \
    "$libdir/cmake/ukprobes/ukprobesConfigVersion.cmake" \
    "$libdir/cmake/ukprobes/ukprobesTargets.cmake" \
    "$prefix/include/ukprobes/kprobes.h" "$prefix/include/ukprobes/pt_regs.h" \
    "$prefix/include/ukprobes/ukprobes.hpp" "$prefix/include/ukprobes/error.hpp"; do
    [ -e "$file" ] || fail "missing ${file#"$prefix"/}"
    echo "  ${file#"$prefix"/}"
done
# The public headers may include each other and the standard library only.
if grep -hE '^#include' "$prefix"/include/ukprobes/* | grep -vE '<[a-z_./]+>|"ukprobes/[a-z_]+\.(h|hpp)"'; then
    fail "an installed header includes something outside the public API"
fi
[ "$(readelf -d "$libdir/libukprobes.so" | grep -c 'RUNPATH\|RPATH' || true)" = 0 ] ||
    fail "the installed library still carries a build-tree RPATH"

cp "$here/probe_own_function.c" "$scratch/x.c"
cp "$here/probe_own_function.cpp" "$scratch/x.cpp"

step "gcc x.c \$(pkg-config --cflags --libs ukprobes)"
pkg_flags=$(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --cflags --libs ukprobes)
echo "pkg-config: $pkg_flags"
(cd "$scratch" && gcc x.c $pkg_flags && ./a.out)

step "find_package(ukprobes) with CMAKE_PREFIX_PATH=$prefix"
mkdir "$scratch/consumer"
cp "$scratch/x.c" "$scratch/x.cpp" "$scratch/consumer/"
cat >"$scratch/consumer/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(ukprobes_consumer LANGUAGES C CXX)
# No CMAKE_CXX_STANDARD here: the package must carry the C++23 the public
# C++ header needs.
find_package(ukprobes 0.1 REQUIRED)
add_executable(x_c x.c)
target_link_libraries(x_c ukprobes::ukprobes)
add_executable(x_cxx x.cpp)
target_link_libraries(x_cxx ukprobes::ukprobes)
CMAKE
build_consumer() {
    cmake -S "$1" -B "$1/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON
    cmake --build "$1/build"
}
build_consumer "$scratch/consumer"
"$scratch/consumer/build/x_c"
"$scratch/consumer/build/x_cxx"

step "find_package(ukprobes) from a C-only project"
# The package's C++23 requirement must not stop a project without C++.
mkdir "$scratch/consumer_c"
cp "$scratch/x.c" "$scratch/consumer_c/"
cat >"$scratch/consumer_c/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(ukprobes_c_consumer LANGUAGES C)
find_package(ukprobes 0.1 REQUIRED)
add_executable(x_c x.c)
target_link_libraries(x_c ukprobes::ukprobes)
CMAKE
build_consumer "$scratch/consumer_c"
"$scratch/consumer_c/build/x_c"

step "all passed"
