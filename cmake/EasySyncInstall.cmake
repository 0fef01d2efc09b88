# install(): headers, libraries and a package config for find_package(EasySync).
include(CMakePackageConfigHelpers)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/easysync DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS easysync_core EXPORT EasySyncTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT EasySyncTargets NAMESPACE easysync:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/EasySync)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/EasySyncConfig.cmake.in
  ${PROJECT_BINARY_DIR}/EasySyncConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/EasySync)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/EasySyncConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/EasySyncConfig.cmake ${PROJECT_BINARY_DIR}/EasySyncConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/EasySync)
