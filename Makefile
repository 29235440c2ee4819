# Two commands do everything on a fresh machine:
#   make demo   - run the real pipeline on the shared sample data with the shipped model
#   make test   - lint + the whole test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
WHEELS := $(SHARED)/wheels
LAUNCH_WHEELS := launch launch_xml launch_yaml launch_testing launch_pytest launch_ros \
	launch_testing_ros ros2cli ros2launch ros2pkg ros2run ros2topic ros2node ros2param ros2service rosidl_runtime_py \
	sensor_msgs_py composition_interfaces_placeholder \
	ros-jazzy-vision-msgs==4.1.1 ros-jazzy-tf2-msgs==0.36.4 ros-jazzy-tf2-py==0.36.4 tf2_ros_py==0.36.4
# launch_ros finds packages and executables through the ament index under the venv prefix.
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
export ROS_DOMAIN_ID ?= 42
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp

.PHONY: venv test lint demo bench mutate clean ament-links

$(VENV)/.installed: requirements-dev.txt setup.py package.xml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	if [ -d $(WHEELS) ]; then $(PY) -m pip install -q --no-index --find-links $(WHEELS) $(LAUNCH_WHEELS); \
	elif [ "$$MPNET_ALLOW_MISSING_SHARED" = 1 ]; then echo "note: $(WHEELS) not found; launch tests will be skipped"; \
	else echo "error: $(WHEELS) not found (launch wheels; set SHARED=..., or MPNET_ALLOW_MISSING_SHARED=1 to skip those tests)"; exit 1; fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(MAKE) --no-print-directory ament-links
	touch $@

# setuptools' editable install skips data_files, so link the ament index marker, package.xml, the launch and
# config files and the node executable into the venv prefix (what `colcon build --symlink-install` does). Files are
# linked one by one into real folders: `ros2 launch` finds launch files with os.walk, which skips folder symlinks.
# The globs are setup.py's data_files; rerun `make ament-links` after adding a launch or config file.
SHARE := $(VENV)/share/mpnet_ros
ament-links:
	mkdir -p $(VENV)/share/ament_index/resource_index/packages $(SHARE) $(VENV)/lib/mpnet_ros
	for d in launch config; do if [ -L $(SHARE)/$$d ]; then rm $(SHARE)/$$d; fi; mkdir -p $(SHARE)/$$d; done
	ln -sfn $(CURDIR)/resource/mpnet_ros $(VENV)/share/ament_index/resource_index/packages/mpnet_ros
	ln -sfn $(CURDIR)/package.xml $(SHARE)/package.xml
	ln -sf $(CURDIR)/launch/*.launch.py $(SHARE)/launch/
	ln -sf $(CURDIR)/config/*.yaml $(CURDIR)/config/*.rviz $(CURDIR)/config/*.xml $(SHARE)/config/
	ln -sfn $(CURDIR)/scripts/segment $(VENV)/lib/mpnet_ros/segment

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .

# The suite stops with a message when $(SHARED)/data or the launch wheels are missing (tests/conftest.py);
# MPNET_ALLOW_MISSING_SHARED=1 runs it with those tests skipped instead.
test: venv
	$(VENV)/bin/ruff check .
	MPNET_SHARED=$(abspath $(SHARED)) $(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

demo: venv
	$(PY) -m mpnet_ros.demo --shared $(SHARED)

# Mutation testing (mutmut), outside CI: one bounded, niced run per module group with its few test files
# (scripts/mutate.py); MUTATE_MINUTES per group (default 20), MUTATE_GROUPS to pick (params trainer infer).
# Resumes where it stopped; results in out/mutation/summary.json, recorded in docs/mutation.md.
mutate: venv
	$(PY) -m pip install -q -r requirements-mutation.txt
	$(PY) scripts/mutate.py $(MUTATE_GROUPS) $(MUTATE_ARGS)

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
