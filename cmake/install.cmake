# make install: the library, its headers, ukprobes.pc and a CMake package.
include(CMakePackageConfigHelpers)

install(TARGETS ukprobes EXPORT ukprobesTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/ukprobes DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT ukprobesTargets NAMESPACE ukprobes:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ukprobes)

configure_package_config_file(cmake/ukprobesConfig.cmake.in
  ${CMAKE_BINARY_DIR}/ukprobesConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ukprobes)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/ukprobesConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/ukprobesConfig.cmake ${CMAKE_BINARY_DIR}/ukprobesConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ukprobes)

configure_file(cmake/ukprobes.pc.in ${CMAKE_BINARY_DIR}/ukprobes.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/ukprobes.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
