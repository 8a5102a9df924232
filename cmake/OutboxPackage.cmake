# Installs the CMake package so a consumer can write
#   find_package(outbox CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE outbox::outbox)
include(CMakePackageConfigHelpers)
set(OUTBOX_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/outbox)

install(EXPORT outboxTargets NAMESPACE outbox:: DESTINATION ${OUTBOX_CMAKE_DIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/outboxConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/outboxConfig.cmake
  INSTALL_DESTINATION ${OUTBOX_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/outboxConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${CMAKE_CURRENT_BINARY_DIR}/outboxConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/outboxConfigVersion.cmake
  DESTINATION ${OUTBOX_CMAKE_DIR})
