# Finds the torch that EASYSYNC_PYTHON (or python3) imports, the way torch.utils.cpp_extension
# does, and defines the imported target easysync_torch_deps (headers, libraries, ABI flag).
# Sets EASYSYNC_TORCH_FOUND, EASYSYNC_TORCH_VERSION, EASYSYNC_TORCH_LIBDIR,
# EASYSYNC_TORCH_CUDA (torch was built with CUDA).
#
# pip builds a package in an isolated environment that hides the user's site-packages; the
# interpreter is the same, so the query runs with pip's isolation variables removed to find
# the torch the user installed (pip install . must build against it).
set(EASYSYNC_TORCH_FOUND OFF)
# The interpreter: EASYSYNC_PYTHON when set on the command line; in a pip build, the one pip
# runs (the user's environment); else $EASYSYNC_PYTHON; else python3.
set(_py "${EASYSYNC_PYTHON}")
if(NOT _py AND SKBUILD AND Python3_EXECUTABLE)
  set(_py "${Python3_EXECUTABLE}")
endif()
if(NOT _py)
  set(_py "$ENV{EASYSYNC_PYTHON}")
endif()
if(NOT _py)
  find_program(EASYSYNC_PYTHON3 NAMES python3 python)
  set(_py "${EASYSYNC_PYTHON3}")
endif()
if(_py)
  set(_query [=[
import os, sys
import torch, torch.utils.cpp_extension as ce
print(torch.__version__)
print(os.pathsep.join(ce.include_paths()))  # ";" would split the lines list below
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(1 if torch.version.cuda else 0)
]=])
  execute_process(
    COMMAND ${CMAKE_COMMAND} -E env --unset=PYTHONPATH --unset=PYTHONNOUSERSITE --unset=PYTHONHOME
            ${_py} -c "${_query}"
    OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_rc EQUAL 0)
    string(REPLACE "\n" ";" _lines "${_out}")
    list(LENGTH _lines _n)
    if(_n GREATER_EQUAL 5)
      list(GET _lines -5 EASYSYNC_TORCH_VERSION)
      list(GET _lines -4 _inc)
      list(GET _lines -3 EASYSYNC_TORCH_LIBDIR)
      list(GET _lines -2 _abi)
      list(GET _lines -1 EASYSYNC_TORCH_CUDA)
      string(REPLACE ":" ";" _inc "${_inc}")
      set(EASYSYNC_TORCH_FOUND ON)
    endif()
  else()
    set(_why "${_err}")
  endif()
endif()

if(EASYSYNC_TORCH_FOUND AND NOT TARGET easysync_torch_deps)
  # GLOBAL: tests/ links the extension and needs its dependencies by name as well.
  add_library(easysync_torch_deps INTERFACE IMPORTED GLOBAL)
  # Headers of a third party: as system headers, so our warnings-as-errors ignore them.
  string(REPLACE ";;" ";" _inc "${_inc}")
  set_target_properties(easysync_torch_deps PROPERTIES INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${_inc}")
  target_include_directories(easysync_torch_deps INTERFACE ${_inc})
  target_compile_definitions(easysync_torch_deps INTERFACE _GLIBCXX_USE_CXX11_ABI=${_abi})
  set(_libs c10 torch torch_cpu)
  if(EASYSYNC_TORCH_CUDA)
    list(APPEND _libs c10_cuda torch_cuda)
  endif()
  foreach(_l IN LISTS _libs)
    find_library(EASYSYNC_TORCH_LIB_${_l} NAMES ${_l} PATHS ${EASYSYNC_TORCH_LIBDIR} NO_DEFAULT_PATH)
    if(EASYSYNC_TORCH_LIB_${_l})
      target_link_libraries(easysync_torch_deps INTERFACE ${EASYSYNC_TORCH_LIB_${_l}})
    endif()
  endforeach()
  message(STATUS "EasySync: torch ${EASYSYNC_TORCH_VERSION} from ${EASYSYNC_TORCH_LIBDIR} (cuda: ${EASYSYNC_TORCH_CUDA})")
elseif(NOT EASYSYNC_TORCH_FOUND)
  message(STATUS "EasySync: no torch importable by '${_py}'")
endif()
