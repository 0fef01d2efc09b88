# Compile options shared by every EasySync target.
add_library(easysync_options INTERFACE)
target_compile_options(easysync_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${EASYSYNC_WERROR}>>:-Werror>
  # GCC 12 at -O3 reports "literal" + std::string as overlapping memcpy (GCC bug 105329).
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>>:-Wno-restrict>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${EASYSYNC_WERROR}>>:-Werror=all-warnings>)
# msgpack-c without Boost: only the standard containers are needed.
target_compile_definitions(easysync_options INTERFACE MSGPACK_NO_BOOST)
if(EASYSYNC_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_compile_options(easysync_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_san}>)
  target_link_options(easysync_options INTERFACE ${_san})
endif()
if(EASYSYNC_SANITIZE_THREAD)
  target_compile_options(easysync_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=thread -fno-omit-frame-pointer>
    # GCC: ThreadSanitizer does not model std::atomic_thread_fence (the waiters' handshake
    # uses one); a race it hides would still show on the variables around it.
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wno-tsan>)
  target_link_options(easysync_options INTERFACE -fsanitize=thread)
endif()

# easysync_add_test(NAME SOURCES src... [LIBS lib...]): one GoogleTest binary, each TEST a ctest case.
function(easysync_add_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE easysync_options GTest::gtest GTest::gtest_main ${T_LIBS})
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600)
endfunction()
