# make install: the library, its headers, ukprobes.pc and a CMake package.
include(CMakePackageConfigHelpers)

# The public C++ header uses std::expected and std::span: a program that
# links ukprobes::ukprobes compiles its C++ as C++23 at least.  (The include
# directory comes from the target's INSTALL_INTERFACE; naming it again under
# INCLUDES DESTINATION would list it twice.)
target_compile_features(ukprobes INTERFACE cxx_std_23)
install(TARGETS ukprobes EXPORT ukprobesTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY include/ukprobes DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT ukprobesTargets NAMESPACE ukprobes:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ukprobes)

configure_package_config_file(cmake/ukprobesConfig.cmake.in
  ${CMAKE_BINARY_DIR}/ukprobesConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ukprobes)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/ukprobesConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/ukprobesConfig.cmake ${CMAKE_BINARY_DIR}/ukprobesConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ukprobes)

# pkg-config: ukprobes.pc names absolute paths, and the prefix is known only
# at install time (`cmake --install --prefix P` overrides the configured one),
# so the install script writes the file, then installs it like any other.
foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
    set(UKP_PC_${dir} "${CMAKE_INSTALL_${dir}}")
  else()
    set(UKP_PC_${dir} "\${prefix}/${CMAKE_INSTALL_${dir}}")
  endif()
endforeach()
install(CODE "
  set(UKP_PC_LIBDIR [[${UKP_PC_LIBDIR}]])
  set(UKP_PC_INCLUDEDIR [[${UKP_PC_INCLUDEDIR}]])
  set(PROJECT_VERSION [[${PROJECT_VERSION}]])
  configure_file([[${CMAKE_CURRENT_SOURCE_DIR}/cmake/ukprobes.pc.in]] [[${CMAKE_BINARY_DIR}/ukprobes.pc]] @ONLY)")
install(FILES ${CMAKE_BINARY_DIR}/ukprobes.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
