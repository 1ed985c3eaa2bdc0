# SPDX-License-Identifier: MIT
# bash completion for lockdctl(1): commands, options, option values, disks.
#
# Installed by `make install` where bash-completion looks for it
# (`pkg-config --variable=completionsdir bash-completion`), and loaded when
# lockdctl is first completed.  Needs only bash: it uses none of
# bash-completion's helpers, so it can be sourced and tested on its own.
# test/test-completion.sh checks that it offers every command and long option
# `lockdctl --help` lists.

# Options every command takes (before or after the command).
_lockdctl_global_opts='--dir --key-mode --socket --json --help --version'

# Each command's own options (lockdctl.c: the commands table).
_lockdctl_cmd_opts()
{
    case $1 in
    key) echo --resource ;;
    run) echo --resource --shared --exclusive --wait --conflict-exit-code --name \
        --uuid --on-loss --direct --create-ok ;;
    acquire) echo --pid --resource --shared --exclusive --wait --conflict-exit-code \
        --name --uuid --on-loss --direct --create-ok ;;
    release) echo --pid --resource ;;
    who) echo --resource --direct --test ;;
    gc) echo --min-age ;;
    doctor) echo --direct ;;
    stop-helper) echo --force ;;
    list) echo --held --free ;;
    esac
}

_lockdctl_commands='key run acquire release status who gc doctor stop-helper list'

# Does option $1 take its value as the next word?
_lockdctl_takes_arg()
{
    case $1 in
    -d | --dir | -k | --key-mode | -S | --socket | -E | --conflict-exit-code | -p | \
        --pid | -n | --name | -u | --uuid | --on-loss | -w | --min-age) return 0 ;;
    esac
    return 1
}

# Complete the value of option $1 from the text $2.
_lockdctl_value()
{
    local opt=$1 cur=$2
    case $opt in
    -d | --dir)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
        ;;
    -S | --socket)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        ;;
    -k | --key-mode)
        mapfile -t COMPREPLY < <(compgen -W 'verbatim canonical lvm scsi' -- "$cur")
        ;;
    --on-loss)
        mapfile -t COMPREPLY < <(compgen -W 'kill stop report exec: exec-or-kill:' -- "$cur")
        # exec:CMD goes on in the same word.
        [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *: ]] &&
            compopt -o nospace 2>/dev/null
        ;;
    -p | --pid)
        mapfile -t COMPREPLY < <(compgen -W "$(cd /proc 2>/dev/null && printf '%s ' [0-9]*)" -- "$cur")
        ;;
    *)
        COMPREPLY=() # a number, a name or a UUID: nothing to offer
        ;;
    esac
}

_lockdctl()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=''
    local i w cmd='' dashdash=''
    COMPREPLY=()
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}

    # "--opt=value": bash splits it at "=" (COMP_WORDBREAKS) into "--opt",
    # "=" and "value"; without that split it is one word.
    if [[ $cur == = ]]; then
        _lockdctl_value "$prev" ''
        return 0
    fi
    if [[ $prev == = ]] && ((COMP_CWORD > 1)); then
        _lockdctl_value "${COMP_WORDS[COMP_CWORD - 2]}" "$cur"
        return 0
    fi
    if [[ $cur == --*=* ]]; then
        _lockdctl_value "${cur%%=*}" "${cur#*=}"
        COMPREPLY=("${COMPREPLY[@]/#/${cur%%=*}=}")
        return 0
    fi

    # The command: the first word that is neither an option nor its value.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ -n $cmd && $w == -- ]]; then
            dashdash=$i
            break
        fi
        if [[ $w == = ]]; then
            ((i++)) # the value of "--opt=value"
            continue
        fi
        if [[ $w == -* ]]; then
            [[ ${COMP_WORDS[i + 1]} != = ]] && _lockdctl_takes_arg "$w" && ((i++))
            continue
        fi
        [[ -z $cmd ]] && cmd=$w
    done

    # run DISK... -- CMD [ARG...]
    if [[ -n $dashdash ]]; then
        if ((COMP_CWORD == dashdash + 1)); then
            mapfile -t COMPREPLY < <(compgen -c -- "$cur")
        else
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return 0
    fi

    if _lockdctl_takes_arg "$prev"; then
        _lockdctl_value "$prev" "$cur"
        return 0
    fi

    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$_lockdctl_global_opts $(_lockdctl_cmd_opts "$cmd")" \
            -- "$cur")
        return 0
    fi

    case $cmd in
    '')
        mapfile -t COMPREPLY < <(compgen -W "$_lockdctl_commands" -- "$cur")
        ;;
    key | run | acquire | release | who | doctor)
        # Disks are paths (and need not exist); --resource names are not,
        # but files are still the best guess.
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        ;;
    esac
    return 0
}

complete -F _lockdctl lockdctl
