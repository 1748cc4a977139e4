# CMake toolchain file that makes Pyfhel's bundled SEAL build without network.
#
# SEAL's CMake fetches Microsoft GSL, zlib and zstd from GitHub at configure
# time. Turning the three options off removes those downloads. The price:
# SEAL cannot compress serialised objects, so sklearn-he always serialises
# with compr_mode="none" (which it does anyway, for reproducible byte counts).
#
# Used by ./dev through the CMAKE_TOOLCHAIN_FILE environment variable, which
# pip's build isolation passes through to Pyfhel's CMake step.
set(SEAL_USE_MSGSL OFF CACHE BOOL "" FORCE)
set(SEAL_USE_ZLIB OFF CACHE BOOL "" FORCE)
set(SEAL_USE_ZSTD OFF CACHE BOOL "" FORCE)
