# OUTBOX_USE_LLD (top-level builds only): link this tree's programs and libraries
# with lld when the compiler accepts -fuse-ld=lld (Debian: lld), else with the
# default linker. The tree links about 60 programs, each against the same static
# libraries, spdlog, libzmq and Boost: 36 of the plain tree's took 13.7 s of CPU
# with GNU ld and 5.8 s with lld (and a third of the wall time). Nothing of it
# reaches a consumer of the installed package, whose link flags are its own.
option(OUTBOX_USE_LLD "Link with lld when the compiler accepts -fuse-ld=lld" ON)
if(OUTBOX_USE_LLD)
  include(CheckLinkerFlag)
  check_linker_flag(CXX -fuse-ld=lld OUTBOX_HAVE_LLD)
  if(OUTBOX_HAVE_LLD)
    add_link_options(-fuse-ld=lld)
  endif()
endif()
