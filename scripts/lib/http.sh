# shellcheck shell=bash
# answers_200 PORT PATH: whether GET PATH on 127.0.0.1:PORT answers 200
# within 2 s (bash's /dev/tcp: no curl needed).
answers_200() {
  local status
  # shellcheck disable=SC2016 # $0 and $1 belong to the inner bash
  status=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" &&
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$1" >&3 && head -n 1 <&3' "$1" "$2" 2>/dev/null) ||
    return 1
  [[ $status == "HTTP/1."[01]" 200 "* ]]
}
