# Shared target helpers: one place sets warnings, the C++ standard, the
# outbox:: alias and the install/export rules for every component.

function(outbox_set_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE
      -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Woverloaded-virtual
      -Wimplicit-fallthrough -Wcast-align -Wnull-dereference)
    if(OUTBOX_WARNINGS_AS_ERRORS)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()

# outbox_add_library(<name> SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
# Creates library <name> with alias outbox::<name>, public headers in
# <component>/include, installed into the outboxTargets export set.
function(outbox_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} ${ARG_SOURCES})
  add_library(outbox::${name} ALIAS ${name})
  target_include_directories(${name} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_compile_features(${name} PUBLIC cxx_std_20)
  target_link_libraries(${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  set_target_properties(${name} PROPERTIES
    OUTPUT_NAME outbox_${name}
    EXPORT_NAME ${name}
    POSITION_INDEPENDENT_CODE ON
    VERSION ${PROJECT_VERSION}
    SOVERSION ${PROJECT_VERSION_MAJOR})
  outbox_set_warnings(${name})
  if(OUTBOX_INSTALL)
    install(TARGETS ${name} EXPORT outboxTargets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
      RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
    install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  endif()
endfunction()

# outbox_add_executable(<target> [NO_INSTALL] OUTPUT_NAME <file name> SOURCES ... LIBS ...)
# A thin program (daemon or CLI) over a library; lands in build/bin/.
# NO_INSTALL: programs for this tree only (benchmarks), left out of `cmake --install`.
function(outbox_add_executable target)
  cmake_parse_arguments(ARG "NO_INSTALL" "OUTPUT_NAME" "SOURCES;LIBS" ${ARGN})
  add_executable(${target} ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE ${ARG_LIBS})
  if(ARG_OUTPUT_NAME)
    set_target_properties(${target} PROPERTIES OUTPUT_NAME ${ARG_OUTPUT_NAME})
  endif()
  outbox_set_warnings(${target})
  if(OUTBOX_INSTALL AND NOT ARG_NO_INSTALL)
    install(TARGETS ${target} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endfunction()

# outbox_find_library(<PREFIX> HEADER <path> LIBRARY <name>)
# Finds a system library by its header and shared library, for packages without a
# usable CMake config (Debian's cnats names a static library the package does not
# ship; hiredis ships none). Sets <PREFIX>_INCLUDE_DIR and <PREFIX>_LIBRARY (cached,
# so every directory sees them) and <PREFIX>_FOUND (ON/OFF) in the caller's scope.
function(outbox_find_library prefix)
  cmake_parse_arguments(ARG "" "HEADER;LIBRARY" "" ${ARGN})
  find_path(${prefix}_INCLUDE_DIR ${ARG_HEADER})
  find_library(${prefix}_LIBRARY ${ARG_LIBRARY})
  if(${prefix}_INCLUDE_DIR AND ${prefix}_LIBRARY)
    set(${prefix}_FOUND ON PARENT_SCOPE)
  else()
    set(${prefix}_FOUND OFF PARENT_SCOPE)
  endif()
endfunction()
