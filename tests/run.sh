#!/bin/sh
# Runs every test binary under $BUILD/tests and every tests/*/test_*.sh script.
# TEST_PREFIX (e.g. "valgrind -q --error-exitcode=99") is put in front of each binary.
# TEST_FILTER selects tests whose path contains it.
BUILD=${BUILD:-build}
fail=0
passed=0
failed_list=""
for t in $(find "$BUILD/tests" -type f -perm -u+x -name 'test_*' | sort) $(ls tests/*/test_*.sh 2>/dev/null | sort); do
    case "$t" in *"${TEST_FILTER:-}"*) ;; *) continue ;; esac
    echo "### $t"
    case "$t" in
    *.sh) BUILD="$BUILD" sh "$t" ;;
    *) ${TEST_PREFIX:-} "$t" ;;
    esac
    rc=$?
    if [ $rc -ne 0 ]; then
        echo "### FAILED: $t (exit $rc)"
        fail=$((fail + 1))
        failed_list="$failed_list $t"
    else
        passed=$((passed + 1))
    fi
done
echo "### test programs: $passed passed, $fail failed${failed_list:+:$failed_list}"
[ $fail -eq 0 ]
